//! Results on stdout.

use std::io::{ErrorKind, Write};

/// Writes `text` to stdout. If the reader has gone away (a closed pipe),
/// exits at once with success: there is nobody left to tell.
pub fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}
