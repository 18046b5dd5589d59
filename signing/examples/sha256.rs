//! Hashes files the way `boxcar` does and prints sha256sum-style lines with
//! the throughput on stderr: `cargo run --release --example sha256 -- FILE...`.

use std::path::Path;
use std::time::Instant;

fn main() {
    let mut failed = false;
    for arg in std::env::args_os().skip(1) {
        let path = Path::new(&arg);
        let started = Instant::now();
        match boxcar_signing::sha256_file(path) {
            Ok((digest, size)) => {
                let seconds = started.elapsed().as_secs_f64();
                println!("{digest}  {}", path.display());
                eprintln!(
                    "{} bytes in {seconds:.3}s: {:.0} MB/s",
                    size,
                    size as f64 / seconds / 1e6
                );
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
