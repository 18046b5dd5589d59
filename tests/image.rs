//! End to end: a real `boxcar build` of the default recipe, booted for real
//! in qemu, and the ways a build must fail without leaving anything behind.
//!
//! Run with `make test` (or `cargo test -p boxcar-e2e -- --test-threads=1`),
//! as root, with the Debian mirror reachable.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use boxcar_e2e::*;

/// The build directory holds what build.json says, and stock tools agree
/// with it: sfdisk on the partitions, sha256sum on the digests,
/// veritysetup on /usr and its root hash.
#[test]
fn build_produces_a_verity_protected_ab_image_that_stock_tools_confirm() {
    if !can_run("build_produces_a_verity_protected_ab_image_that_stock_tools_confirm") {
        return;
    }
    let dir = shared_build();
    let info = read_json(&dir.join("build.json"));
    assert_eq!(info["version"], "0.0.0-e2e");
    assert_eq!(info["channel"], "alpha");
    assert_eq!(info["usr"]["filesystem"], "erofs");
    let root_hash = info["usr"]["root_hash"].as_str().unwrap();
    assert_eq!(root_hash.len(), 64);
    assert!(info["kernel"]["cmdline"]
        .as_str()
        .unwrap()
        .contains(&format!("usrhash={root_hash}")));

    let roles: Vec<&str> = info["disk"]["partition_table"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "esp",
            "usr-a",
            "usr-a-verity",
            "usr-a-signature",
            "usr-b",
            "usr-b-verity",
            "usr-b-signature",
            "root"
        ]
    );
    let sfdisk: serde_json::Value = serde_json::from_str(&host_tool(
        "sfdisk",
        &["--json", dir.join("disk.raw").to_str().unwrap()],
    ))
    .unwrap();
    let labels = names(&sfdisk["partitiontable"]["partitions"]);
    assert_eq!(
        labels[1], "boxcar_0.0.0-e2e",
        "USR-A carries the version in its label"
    );
    assert_eq!(labels[3], "boxcar_0.0.0-e2e_sig");
    assert_eq!(labels[4], "_empty", "USR-B is an empty slot");
    assert_eq!(labels[5], "_empty");
    assert_eq!(labels[6], "_empty");

    let file_names = names(&info["files"]);
    for expected in [
        "disk.raw",
        "usr.raw",
        "usr-verity.raw",
        "usr-verity-sig.raw",
        "uki.efi",
        "vmlinuz",
        "initrd",
        "manifest.json",
    ] {
        assert!(
            file_names.contains(&expected),
            "{expected} missing from build.json files"
        );
        assert!(
            dir.join(expected).is_file(),
            "{expected} missing from the build directory"
        );
    }
    // sha256sum --check over the smaller files (the disk image is covered
    // by the boot test, /usr by veritysetup below).
    let digests: Vec<(&str, &str)> = info["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["size"].as_u64().unwrap() < 512 * 1024 * 1024)
        .map(|f| (f["sha256"].as_str().unwrap(), f["name"].as_str().unwrap()))
        .collect();
    assert_digests_match(dir, &digests);

    host_tool(
        "veritysetup",
        &[
            "verify",
            dir.join("usr.raw").to_str().unwrap(),
            dir.join("usr-verity.raw").to_str().unwrap(),
            root_hash,
        ],
    );

    let packages = names(&info["packages"]);
    for needed in ["systemd", "containerd", "docker.io", "docker-cli"] {
        assert!(
            packages.iter().any(|p| p.starts_with(needed)),
            "{needed} not in the package manifest"
        );
    }
    assert_kernel_of_our_own(&info, &packages);
    assert_dockerd_of_our_own(&info);
    assert_footprint_accounts_for_the_image(&info, dir);
    let phases = names(&info["phases"]);
    assert_eq!(
        phases,
        [
            "compose",
            "collect",
            "inspect",
            "secure boot",
            "package",
            "package qemu",
            "package vmware",
            "package aws",
            "package metal",
            "package pxe",
            "digest",
            "update payload",
            "total"
        ]
    );
    assert!(dir.join("build.log").metadata().unwrap().len() > 0);

    // The update nodes download: stock zstd and sha256sum agree with
    // build.json, and the /usr and hash tree it carries verify against the
    // root hash with veritysetup.
    let update = info["update"]["files"]
        .as_array()
        .expect("an update payload");
    let mut digests = Vec::new();
    let staged = tempfile::tempdir_in(scratch_dir()).unwrap();
    for file in update {
        let name = file["name"].as_str().unwrap();
        digests.push((file["sha256"].as_str().unwrap(), name));
        let installed = staged.path().join(file["installed_name"].as_str().unwrap());
        host_tool(
            "zstd",
            &[
                "-dq",
                dir.join(name).to_str().unwrap(),
                "-o",
                installed.to_str().unwrap(),
            ],
        );
        let sum = host_tool("sha256sum", &[installed.to_str().unwrap()]);
        assert!(
            sum.starts_with(file["installed_sha256"].as_str().unwrap()),
            "{sum}"
        );
    }
    assert_digests_match(dir, &digests);
    let part = |role: &str| {
        let file = update.iter().find(|f| f["role"] == role).unwrap();
        staged.path().join(file["installed_name"].as_str().unwrap())
    };
    host_tool(
        "veritysetup",
        &[
            "verify",
            part("usr").to_str().unwrap(),
            part("usr-verity").to_str().unwrap(),
            root_hash,
        ],
    );
    // The signature partition travels whole, zeros included.
    assert_eq!(
        std::fs::read(part("usr-signature")).unwrap(),
        std::fs::read(dir.join("usr-verity-sig.raw")).unwrap()
    );
    // The agent in the image pins the suite's store key.
    let agent = &info["update_agent"];
    assert_eq!(agent["channel"], "alpha");
    assert_eq!(agent["keys"].as_array().unwrap().len(), 1);
    assert_signed_for_secure_boot(&info, dir);
}

/// The boot chain is signed with the suite's Secure Boot key, as stock
/// sbverify sees it: the UKI, every platform addon and the boot loader
/// read back from the ESP; the build ships the certificate operators
/// enroll, and build.json names its fingerprint.
fn assert_signed_for_secure_boot(info: &serde_json::Value, dir: &Path) {
    let record = &info["secure_boot"];
    assert_eq!(record["certificate"], "secure-boot.crt");
    let certificate = dir.join("secure-boot.crt");
    assert_eq!(
        std::fs::read(&certificate).unwrap(),
        std::fs::read(shared_secure_boot_key().certificate()).unwrap(),
        "the build ships the certificate it was signed with"
    );
    let fingerprint = host_tool(
        "openssl",
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            certificate.to_str().unwrap(),
        ],
    );
    assert_eq!(
        fingerprint
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase(),
        record["certificate_sha256"].as_str().unwrap()
    );
    let signed: Vec<&str> = record["signed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    for platform in ["qemu", "vmware", "aws", "metal", "pxe"] {
        let addon = format!("platform-{platform}.addon.efi");
        assert!(signed.contains(&addon.as_str()), "{signed:?}");
    }
    assert!(signed.contains(&"uki.efi"), "{signed:?}");
    assert!(
        signed.contains(&"disk.raw:ESP/EFI/BOOT/BOOTX64.EFI"),
        "{signed:?}"
    );
    assert!(signed.contains(&"usr-verity-sig.raw"), "{signed:?}");
    assert_usr_signed(info, dir, &certificate);
    let scratch = tempfile::tempdir_in(scratch_dir()).unwrap();
    let loader = scratch.path().join("BOOTX64.EFI");
    copy_from_esp(dir, "EFI/BOOT/BOOTX64.EFI", &loader);
    let mut files = vec![dir.join("uki.efi"), loader];
    files.extend(
        ["qemu", "vmware", "aws", "metal", "pxe"]
            .iter()
            .map(|p| dir.join(format!("platform-{p}.addon.efi"))),
    );
    for file in files {
        let output = host_tool(
            "sbverify",
            &[
                "--cert",
                certificate.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
        );
        assert!(
            output.contains("Signature verification OK"),
            "{file:?}: {output}"
        );
    }
}

/// Slot A's signature partition signs the /usr root hash with the Secure
/// Boot key, as stock openssl sees it: a PKCS#7 signature over the root
/// hash (hex) whose signer is the build's certificate, named by its
/// fingerprint in the partition and in build.json.
fn assert_usr_signed(info: &serde_json::Value, dir: &Path, certificate: &Path) {
    let root_hash = info["usr"]["root_hash"].as_str().unwrap();
    let fingerprint = info["secure_boot"]["certificate_sha256"].as_str().unwrap();
    assert_eq!(info["usr"]["signature_file"], "usr-verity-sig.raw");
    assert_eq!(info["usr"]["signed_by"], fingerprint);
    let partition = std::fs::read(dir.join("usr-verity-sig.raw")).unwrap();
    assert_eq!(partition.len(), 16384);
    let end = partition.iter().rposition(|&b| b != 0).unwrap() + 1;
    let document: serde_json::Value = serde_json::from_slice(&partition[..end]).unwrap();
    assert_eq!(document["rootHash"], root_hash);
    assert_eq!(document["certificateFingerprint"], fingerprint);
    let scratch = tempfile::tempdir_in(scratch_dir()).unwrap();
    let (der, content) = (
        scratch.path().join("usr.p7s"),
        scratch.path().join("roothash"),
    );
    std::fs::write(&der, base64_decode(document["signature"].as_str().unwrap())).unwrap();
    std::fs::write(&content, root_hash).unwrap();
    let verified = |content: &Path| {
        std::process::Command::new("openssl")
            .args(["smime", "-verify", "-binary", "-inform", "DER", "-noverify"])
            .args(["-nointern", "-certfile", certificate.to_str().unwrap()])
            .args(["-in", der.to_str().unwrap(), "-content"])
            .arg(content)
            .args(["-out", "/dev/null"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        verified(&content),
        "openssl does not verify the /usr signature"
    );
    // A signature of this root hash, of no other.
    let other = scratch.path().join("other");
    std::fs::write(&other, "ab".repeat(32)).unwrap();
    assert!(!verified(&other));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Every platform's artifact is in build.json and on disk, each in its
/// format (as stock tools see it), and every disk artifact carries the very
/// same /usr: the USR-A partition read back with `qemu-img dd` hashes to
/// build.json's usr.raw digest.
/// The footprint in build.json covers /usr as built: its files add up to
/// nearly all of du's figure (which also counts directories and links),
/// every byte goes to one package or to "(no package)", the packages a
/// container host is made of are there, and what no package owns (hwdb,
/// module indexes, the overlays, the agent) stays a small share, which
/// shows the owners were matched across merged /usr. The initrd's is read
/// across its archives (more bytes decompressed than stored, the kernel's
/// modules among them). `boxcar footprint` prints both.
fn assert_footprint_accounts_for_the_image(info: &serde_json::Value, dir: &Path) {
    let usr = &info["usr"];
    let footprint = &usr["footprint"];
    let bytes = footprint["bytes"]
        .as_u64()
        .expect("build.json has a footprint");
    let du_bytes = usr["content_bytes"].as_u64().unwrap();
    assert!(
        bytes <= du_bytes && bytes * 10 >= du_bytes * 9,
        "footprint {bytes} bytes against du's {du_bytes}"
    );
    let packages = footprint["packages"].as_array().unwrap();
    let share = |name: &str| -> u64 {
        packages
            .iter()
            .filter(|p| p["name"].as_str().unwrap().starts_with(name))
            .map(|p| p["bytes"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(share(""), bytes, "every byte goes to one package");
    for needed in ["containerd", "docker.io", "systemd", "libc6"] {
        assert!(share(needed) > 0, "{needed} has no bytes in {footprint:#}");
    }
    let unowned = share("(no package)");
    eprintln!("footprint: {bytes} bytes in /usr, {unowned} owned by no package");
    assert!(
        unowned * 100 < bytes * 15,
        "{unowned} of {bytes} bytes owned by no package"
    );
    let initrd = &info["kernel"]["initrd"];
    let stored = std::fs::metadata(dir.join("initrd")).unwrap().len();
    assert_eq!(initrd["stored_bytes"].as_u64(), Some(stored));
    assert!(initrd["bytes"].as_u64().unwrap() > stored, "{initrd:#}");
    assert_lean(footprint, initrd);
    assert_esp_holds_boot_files_only(dir);
    assert_no_interpreter_installed(info);
    let printed = boxcar(&["footprint", "--build", dir.to_str().unwrap(), "--top", "5"]);
    assert!(printed.status.success());
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        text.contains("biggest packages") && text.contains("the UKI's initrd"),
        "{text}"
    );
}

/// What recipes/mkosi.conf.d/50-lean.conf and the initrd's postinst remove
/// stays out, and the initrd carries no kernel modules: each would be among
/// the biggest directories or files if it came back.
fn assert_lean(usr_footprint: &serde_json::Value, initrd: &serde_json::Value) {
    let usr_directories = names(&usr_footprint["directories"]);
    for removed in ["/usr/share/locale", "/usr/lib/x86_64-linux-gnu/gconv"] {
        assert!(
            !usr_directories.contains(&removed),
            "{removed} is back in /usr"
        );
    }
    // Each of these would be among the twenty biggest files if it came back.
    assert_none_listed(
        &usr_footprint["biggest_files"],
        &[
            "/usr/bin/ctr",
            "/usr/bin/perl",
            "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb",
            "/usr/lib/udev/hwdb.d/20-OUI.hwdb",
        ],
        "/usr",
    );
    // The kernel travels in the UKI only (recipes/mkosi.finalize).
    let kernels: Vec<&str> = names(&usr_footprint["biggest_files"])
        .into_iter()
        .filter(|file| file.ends_with("/vmlinuz"))
        .collect();
    assert!(
        kernels.is_empty(),
        "a second kernel is in /usr: {kernels:?}"
    );
    // perl-base keeps only its copyright notices (about 100 KiB).
    let perl_bytes: u64 = usr_footprint["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|package| package["name"] == "perl-base")
        .map(|package| package["bytes"].as_u64().unwrap())
        .sum();
    assert!(
        perl_bytes < 1 << 20,
        "Perl is back in /usr: {perl_bytes} bytes"
    );
    assert_none_listed(
        &initrd["biggest_files"],
        &[
            "/usr/lib/udev/hwdb.bin",
            "/usr/bin/ignition-validate",
            "/usr/sbin/lvm",
            "/usr/lib/x86_64-linux-gnu/libdb-",
            "/usr/lib/x86_64-linux-gnu/libsqlite3.",
            "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
        ],
        "the initrd",
    );
    // No modules: only modprobe's lists of what is built in.
    let module_bytes = initrd["directories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "/usr/lib/modules")
        .map_or(0, |d| d["bytes"].as_u64().unwrap());
    assert!(
        module_bytes < 2 << 20,
        "the initrd carries {module_bytes} bytes under /usr/lib/modules: the kernel has no modules"
    );
}

/// The kernel is built by the recipe (recipes/mkosi.build.chroot), not
/// taken from Debian's package, and build.json names what it was built
/// from and with.
fn assert_kernel_of_our_own(info: &serde_json::Value, packages: &[&str]) {
    assert!(
        !packages.iter().any(|p| p.starts_with("linux-image")),
        "Debian's kernel package is in the image: {packages:?}"
    );
    let kernel = &info["kernel"];
    let release = kernel["release"].as_str().unwrap();
    assert!(release.ends_with("-boxcar"), "kernel release {release}");
    assert_built_with(
        &kernel["build_packages"],
        &["linux-source-6.12", "linux-config-6.12", "gcc-", "binutils"],
        "the kernel",
    );
}

/// Each of `needed` starts the name of one of `build_packages`.
fn assert_built_with(build_packages: &serde_json::Value, needed: &[&str], program: &str) {
    let built_with = names(build_packages);
    for needed in needed {
        assert!(
            built_with.iter().any(|p| p.starts_with(needed)),
            "{needed} not among {program}'s build packages: {built_with:?}"
        );
    }
}

/// dockerd is built by the recipe (recipes/dockerd/) from the source of
/// the docker.io package the image installs, and build.json names that
/// source and what it was built with.
fn assert_dockerd_of_our_own(info: &serde_json::Value) {
    let dockerd = &info["dockerd"];
    assert_eq!(dockerd["source"]["name"], "docker.io", "{dockerd}");
    assert_eq!(dockerd["source"]["architecture"], "source");
    let source_version = dockerd["source"]["version"].as_str().unwrap();
    let package = info["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "docker.io")
        .unwrap();
    // A binary rebuild of the same source adds "+bN" to its version.
    let package_version = package["version"].as_str().unwrap();
    assert!(
        package_version == source_version
            || package_version.starts_with(&format!("{source_version}+b")),
        "dockerd built from docker.io {source_version}, the image has {package_version}"
    );
    assert_built_with(
        &dockerd["build_packages"],
        &[
            "golang-1.",
            "golang-github-containerd-containerd-dev",
            "gcc-",
            "libseccomp-dev",
        ],
        "dockerd",
    );
}

/// The ESP holds the boot loader, the UKI and the addons: not the kernel
/// package's own files (vmlinuz, config, System.map), which nothing there
/// boots.
fn assert_esp_holds_boot_files_only(dir: &Path) {
    let listing = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-/", "-b", "-i", &esp_image(dir), "::/"])
        .output()
        .unwrap();
    assert!(listing.status.success(), "mdir could not list the ESP");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let strays: Vec<&str> = listing
        .lines()
        .filter(|path| !path.starts_with("::/EFI/") && !path.starts_with("::/loader/"))
        .collect();
    assert!(
        strays.is_empty(),
        "the ESP holds more than boot files: {strays:?}"
    );
    assert!(
        listing.contains("::/EFI/Linux/"),
        "no UKI on the ESP:\n{listing}"
    );
}

/// No entry of the footprint list `files` starts with any of `removed`.
fn assert_none_listed(files: &serde_json::Value, removed: &[&str], place: &str) {
    let files = names(files);
    for removed in removed {
        assert!(
            !files.iter().any(|file| file.starts_with(removed)),
            "{removed} is back in {place}"
        );
    }
}

/// No unit on the host runs Python: the one package that brought it
/// (amazon-ec2-utils, for a udev helper) is replaced by nvme-cli and a
/// shell helper (overlays/base/usr/lib/udev).
fn assert_no_interpreter_installed(info: &serde_json::Value) {
    let python: Vec<&str> = names(&info["packages"])
        .into_iter()
        .filter(|name| name.starts_with("python") || name.starts_with("libpython"))
        .collect();
    assert!(python.is_empty(), "Python is back in /usr: {python:?}");
}

#[test]
fn every_platform_artifact_is_packaged_with_the_same_usr() {
    if !can_run("every_platform_artifact_is_packaged_with_the_same_usr") {
        return;
    }
    let dir = shared_build();
    let info = read_json(&dir.join("build.json"));
    let artifacts = info["artifacts"].as_array().unwrap();
    let file_of = |platform: &str, role: &str| -> std::path::PathBuf {
        let artifact = artifacts
            .iter()
            .find(|a| a["platform"] == platform && a["role"] == role)
            .unwrap_or_else(|| panic!("no {role} artifact for {platform}"));
        assert!(
            artifact["kernel_cmdline"]
                .as_str()
                .unwrap()
                .contains(&format!("boxcar.platform={platform}")),
            "{artifact}"
        );
        dir.join(artifact["file"].as_str().unwrap())
    };
    let qcow2 = file_of("qemu", "disk");
    let ova = file_of("vmware", "disk");
    let aws = file_of("aws", "disk");
    let metal = file_of("metal", "disk");
    let pxe_script = file_of("pxe", "boot-script");
    assert!(file_of("pxe", "kernel").is_file() && file_of("pxe", "initrd").is_file());
    let platforms: Vec<&str> = info["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["qemu", "vmware", "aws", "metal", "pxe"]);

    let qemu_info: serde_json::Value = serde_json::from_str(&host_tool(
        "qemu-img",
        &["info", "--output=json", qcow2.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(qemu_info["format"], "qcow2");
    assert_eq!(
        qemu_info["format-specific"]["data"]["compression-type"],
        "zstd"
    );
    assert_eq!(qemu_info["virtual-size"], info["disk"]["size"]);

    let members = host_tool("tar", &["-tf", ova.to_str().unwrap()]);
    let members: Vec<&str> = members.lines().collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(
        members[0].ends_with(".ovf")
            && members[1].ends_with(".mf")
            && members[2].ends_with(".vmdk")
    );
    let scratch = tempfile::tempdir_in(scratch_dir()).unwrap();
    host_tool(
        "tar",
        &[
            "-xf",
            ova.to_str().unwrap(),
            "-C",
            scratch.path().to_str().unwrap(),
        ],
    );
    let vmdk = scratch.path().join(members[2]);

    host_tool("zstd", &["-t", "-q", metal.to_str().unwrap()]);
    let metal_raw = scratch.path().join("metal.raw");
    host_tool(
        "zstd",
        &[
            "-d",
            "-q",
            "-o",
            metal_raw.to_str().unwrap(),
            metal.to_str().unwrap(),
        ],
    );

    let script = std::fs::read_to_string(&pxe_script).unwrap();
    let root_hash = info["usr"]["root_hash"].as_str().unwrap();
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(
        script.contains(&format!("usrhash={root_hash}")) && script.contains("root=tmpfs"),
        "{script}"
    );

    // The same /usr, byte for byte, in every disk artifact.
    let usr_digest = info["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "usr.raw")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let usr = info["disk"]["partition_table"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "usr-a")
        .unwrap();
    let mib = 1024 * 1024;
    let (offset, size) = (
        usr["offset"].as_u64().unwrap(),
        usr["size"].as_u64().unwrap(),
    );
    assert!(offset % mib == 0 && size % mib == 0);
    for (image, format) in [
        (&qcow2, "qcow2"),
        (&vmdk, "vmdk"),
        (&aws, "raw"),
        (&metal_raw, "raw"),
    ] {
        let out = scratch.path().join("usr-from-artifact.raw");
        host_tool(
            "qemu-img",
            &[
                "dd",
                "-f",
                format,
                "-O",
                "raw",
                "bs=1M",
                &format!("skip={}", offset / mib),
                // qemu-img dd counts from the start of the input, not from skip.
                &format!("count={}", (offset + size) / mib),
                &format!("if={}", image.display()),
                &format!("of={}", out.display()),
            ],
        );
        let digest = host_tool("sha256sum", &[out.to_str().unwrap()]);
        assert!(
            digest.starts_with(&usr_digest),
            "{} carries a different /usr: {digest}",
            image.display()
        );
        std::fs::remove_file(&out).unwrap();
    }

    // sha256sum agrees with build.json about every artifact but the big raw one.
    let digests: Vec<(&str, &str)> = artifacts
        .iter()
        .filter(|a| a["size"].as_u64().unwrap() < 1024 * 1024 * 1024)
        .map(|a| (a["sha256"].as_str().unwrap(), a["file"].as_str().unwrap()))
        .collect();
    assert_digests_match(dir, &digests);
}

/// Every artifact boots the way its platform presents it, runs /usr from
/// dm-verity with the build's root hash, refuses writes to /usr, runs a
/// container, knows its platform, and runs that platform's agents only.
/// The release pipeline as CI jobs (ci/gitlab-ci.yml, run unchanged by
/// gitlab-ci-local) on the suite's build: staged to an S3 server, each
/// platform's artifact boot-tested in its own job (provisioned by Ignition
/// its platform's way, logged in to with OpenSSH, rebooted), published to
/// the S3 store with the key only the publish job gets, verified. Then the
/// evidence the jobs pushed is checked here, and a pipeline whose metal
/// artifact was damaged must stop before publishing.
#[test]
fn every_platform_artifact_boots_and_proves_itself() {
    if !can_run("every_platform_artifact_boots_and_proves_itself") {
        return;
    }
    let dir = shared_build();
    let lab = PipelineLab::start();
    let run = lab.run(dir, "0.0.0-e2e", "staging", &[]);
    eprintln!("pipeline jobs:\n{}", run.summary().join("\n"));
    assert!(run.success, "the pipeline failed:\n{}", tail(&run.log, 80));
    let staged = lab.server.object_file("staging/0.0.0-e2e/evidence");
    let platforms = ["qemu", "vmware", "aws", "metal", "pxe"];
    let all: Vec<serde_json::Value> = platforms
        .iter()
        .map(|platform| {
            // The evidence travels back into the build, as the boot tests
            // would have left it, for the tests that publish it.
            let target = dir.join("evidence").join(platform);
            let _ = std::fs::remove_dir_all(&target);
            std::fs::create_dir_all(&target).unwrap();
            for entry in std::fs::read_dir(staged.join(platform)).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
            }
            read_json(&target.join("evidence.json"))
        })
        .collect();
    let failed: Vec<(String, &serde_json::Value)> = all
        .iter()
        .flat_map(|e| {
            e["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["passed"] != true)
                .map(move |c| (e["platform"].as_str().unwrap().to_owned(), c))
        })
        .collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    pipeline_published_and_stops_on_a_failed_platform(&lab, dir);
    let info = read_json(&dir.join("build.json"));
    let root_hash = info["usr"]["root_hash"].as_str().unwrap();
    for evidence in &all {
        let platform = evidence["platform"].as_str().unwrap();
        let guest = &evidence["guest"];
        assert_eq!(evidence["outcome"], "powered-off", "{platform}");
        assert_eq!(guest["platform"], platform);
        assert!(
            guest["usr_dm_table"].as_str().unwrap().contains(root_hash),
            "{platform}"
        );
        assert!(
            guest["usr_write"]
                .as_str()
                .unwrap()
                .contains("Read-only file system"),
            "{platform}"
        );
        assert_eq!(
            guest["container_output"], "boxcar-container-ok",
            "{platform}"
        );
        assert!(
            evidence["boot_time"]["userspace"].as_f64().unwrap() > 0.0,
            "{platform}"
        );
        assert_footprint_reported(platform, guest);
        assert!(
            dir.join(format!("evidence/{platform}/console.log"))
                .metadata()
                .unwrap()
                .len()
                > 0
        );
    }
    let by_platform = |id: &str| all.iter().find(|e| e["platform"] == id).unwrap();
    assert_eq!(
        by_platform("qemu")["guest"]["unit.qemu-guest-agent.service"],
        "active"
    );
    assert_eq!(
        by_platform("qemu")["guest"]["unit.open-vm-tools.service"],
        "inactive"
    );
    assert_eq!(by_platform("vmware")["guest"]["virtualization"], "vmware");
    let vmware_checks = names(&by_platform("vmware")["checks"]);
    assert!(
        vmware_checks.contains(&"the manifest's SHA256 digests match the files"),
        "{vmware_checks:?}"
    );
    // The EC2 agent read the metadata's name; the config's hostname won.
    assert_eq!(
        by_platform("aws")["guest"]["metadata_hostname"],
        "ip-169-254-0-15.boxcar-test.internal"
    );
    assert_eq!(
        by_platform("aws")["guest"]["hostname"],
        "boxcar-aws-provisioned"
    );
    assert_eq!(
        by_platform("aws")["guest"]["unit.boxcar-ec2-hostname.service"],
        "active"
    );
    assert!(by_platform("aws")["hardware"]
        .as_str()
        .unwrap()
        .contains("NVMe disk"));
    let metal = &by_platform("metal")["guest"];
    assert!(
        metal["root_partition_bytes"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 8 * 1024 * 1024 * 1024
    );
    // Every platform was provisioned by Ignition, its config delivered the
    // platform's way, and the harness logged in with OpenSSH; disk platforms
    // were rebooted and Ignition did not run again.
    let check_names = |id: &str| -> Vec<String> {
        by_platform(id)["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // The signed build booted under enforcing Secure Boot wherever its
    // platform boots UEFI; the PXE boot is BIOS (iPXE).
    for id in ["qemu", "vmware", "aws", "metal"] {
        let names = check_names(id);
        for expected in [
            "the firmware enforces Secure Boot",
            "the kernel is locked down",
        ] {
            assert!(names.iter().any(|n| n == expected), "{id}: {expected}");
        }
        assert_eq!(by_platform(id)["guest"]["secure_boot"], "enabled", "{id}");
    }
    for id in ["qemu", "vmware", "aws", "metal", "pxe"] {
        let names = check_names(id);
        for expected in [
            "core logs in over SSH with the configured key",
            "Ignition wrote the configured file",
            "the hostname is the configured one",
            "the configured unit runs its container",
            "Ignition made the new user and group, the directory, the link, the drop-in and the mask, and enabled docker",
            "core may use sudo without a password",
            "a password login is refused",
            "no account can log in with a password",
            "sshd listens once an account has a key",
        ] {
            assert!(names.iter().any(|n| n == expected), "{id}: {expected}");
        }
        let rebooted = names.iter().any(|n| n == "Ignition did not run again");
        // Not PXE (nothing persists) nor VMware (its config comes through
        // qemu's fw_cfg, whose reboot the qemu boot checks).
        let expect_reboot = !["pxe", "vmware"].contains(&id);
        assert_eq!(rebooted, expect_reboot, "{id}: reboot checks in {names:?}");
        let kept = names
            .iter()
            .any(|n| n == "docker started at boot to bring back a container with a restart policy");
        assert_eq!(kept, expect_reboot, "{id}: {names:?}");
    }
    assert!(check_names("vmware")
        .iter()
        .any(|n| n == "the OVF offers the Ignition config as user-settable guestinfo properties"));
    assert!(by_platform("vmware")["hardware"]
        .as_str()
        .unwrap()
        .contains("VMware's guestinfo cannot be emulated"));
    assert_eq!(by_platform("pxe")["guest"]["root_fstype"], "tmpfs");
    assert!(by_platform("pxe")["hardware"]
        .as_str()
        .unwrap()
        .contains("no disk (network boot)"));
}

/// The running system's footprint, as the guest reports it after the boot:
/// memory in use and where it goes, processes, the slowest and the busiest
/// units and the critical chain.
fn assert_footprint_reported(platform: &str, guest: &serde_json::Value) {
    let number = |key: &str| -> u64 {
        guest[key]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{platform}: {key} is {}", guest[key]))
    };
    let memory_kib = number("footprint.memory_used_kib");
    let processes = number("footprint.processes");
    eprintln!(
        "{platform}: {} MiB of memory in use, {processes} processes",
        memory_kib / 1024
    );
    assert!(memory_kib > 16 * 1024, "{platform}: {memory_kib} KiB");
    assert!(processes > 3, "{platform}: {processes} processes");
    assert!(number("footprint.kernel_threads") > 0, "{platform}");
    // The kernel has no loadable modules; the drivers of the disk and
    // network card the test gives each platform (recipes/platforms.toml)
    // are built in and bound to their devices.
    assert_eq!(guest["footprint.modules"], "", "{platform}: modules loaded");
    let drivers_bound: Vec<&str> = guest["footprint.drivers"]
        .as_str()
        .unwrap()
        .split(';')
        .collect();
    let drivers: &[&str] = match platform {
        "qemu" => &["virtio_blk", "virtio_net"],
        "vmware" => &["ahci", "vmxnet3"],
        "aws" => &["nvme", "virtio_net"],
        "metal" => &["ahci", "e1000e"],
        "pxe" => &["virtio_net"],
        _ => &[],
    };
    for driver in drivers {
        assert!(
            drivers_bound.contains(driver),
            "{platform}: {driver} is not among the drivers bound: {drivers_bound:?}"
        );
    }
    // recipes/dockerd/build: not position-independent (ET_EXEC).
    assert_eq!(
        guest["footprint.dockerd_elf_type"], "0002",
        "{platform}: the running image's dockerd is not the recipe's"
    );
    let breakdown = guest["footprint.memory_kib"].as_str().unwrap();
    let biggest = guest["footprint.biggest_processes"].as_str().unwrap();
    eprintln!("{platform}: memory {breakdown}; biggest processes {biggest}");
    assert!(number("footprint.watermark_high_kib") > 0, "{platform}");
    for field in [
        "AnonPages=",
        "Shmem=",
        "SUnreclaim=",
        "PageTables=",
        "Active(file)=",
        "Inactive(file)=",
    ] {
        assert!(breakdown.contains(field), "{platform}: {breakdown}");
    }
    assert!(biggest.contains("systemd="), "{platform}: {biggest}");
    let slowest = guest["footprint.slowest_units"].as_str().unwrap();
    assert!(
        slowest.contains(".service") && !slowest.contains(".device"),
        "{platform}: {slowest}"
    );
    // "12.34s dockerd.service;0.56s ...": processor time, services only.
    let busiest = guest["footprint.busiest_units"].as_str().unwrap();
    let entries: Vec<&str> = busiest.split(';').collect();
    assert!(entries.len() > 3, "{platform}: {busiest}");
    for entry in entries {
        let (seconds, unit) = entry.split_once("s ").unwrap_or_default();
        assert!(
            seconds.parse::<f64>().is_ok() && unit.ends_with(".service"),
            "{platform}: {busiest}"
        );
    }
    let chain = guest["footprint.critical_chain"].as_str().unwrap();
    assert!(
        chain.starts_with("multi-user.target @"),
        "{platform}: {chain}"
    );
}

/// After the pipeline: the S3 store verifies and alpha points at the
/// build, readers download from the bucket over plain HTTP with no
/// credentials, and a second pipeline whose metal artifact was damaged
/// after the build fails in that platform's job and never publishes.
fn pipeline_published_and_stops_on_a_failed_platform(lab: &PipelineLab, dir: &Path) {
    let alpha = read_json(&lab.server.object_file("store/channels/alpha.json"));
    assert_eq!(alpha["version"], "0.0.0-e2e");
    // Staging has served its purpose (and the disk is needed below).
    std::fs::remove_dir_all(lab.server.object_file("staging/0.0.0-e2e")).unwrap();
    let verified = lab.boxcar_with_credentials(&[
        "verify",
        "--store",
        &lab.store(),
        "--key",
        lab.root_public().to_str().unwrap(),
    ]);
    assert!(verified.status.success(), "verify of the S3 store failed");
    // The bucket as a website endpoint serves it: a plain web server over
    // the tree s3s-fs keeps, read with no credentials.
    let website = lab.server.website();
    let downloads = lab.path("downloads");
    let downloaded = Command::new(boxcar_bin())
        .args(["download", "--channel", "alpha", "--platform", "qemu"])
        .args(["--store", &format!("{}/store", website.url)])
        .arg("--key")
        .arg(lab.root_public())
        .arg("--to")
        .arg(&downloads)
        .arg("--state")
        .arg(lab.path("seen.json"))
        .output()
        .unwrap();
    drop(website);
    assert!(
        downloaded.status.success(),
        "{}",
        String::from_utf8_lossy(&downloaded.stderr)
    );
    let qcow2 = "boxcar-0.0.0-e2e-qemu.qcow2";
    assert_eq!(
        std::fs::read(downloads.join(qcow2)).unwrap(),
        std::fs::read(dir.join(qcow2)).unwrap()
    );
    // The image comes with the Secure Boot certificate to enroll for it.
    assert_eq!(
        std::fs::read(downloads.join("secure-boot.crt")).unwrap(),
        std::fs::read(dir.join("secure-boot.crt")).unwrap()
    );

    // A copy of the build as 0.0.1-e2e whose metal artifact is damaged
    // after build.json recorded it: the metal job must fail and the
    // publish must not run.
    let broken = lab.path("broken");
    std::fs::create_dir(&broken).unwrap();
    let info = read_json(&dir.join("build.json"));
    for artifact in info["artifacts"].as_array().unwrap() {
        let file = artifact["file"].as_str().unwrap();
        std::fs::hard_link(dir.join(file), broken.join(file)).unwrap();
    }
    for file in info["update"]["files"].as_array().unwrap() {
        let file = file["name"].as_str().unwrap();
        std::fs::hard_link(dir.join(file), broken.join(file)).unwrap();
    }
    let certificate = info["secure_boot"]["certificate"].as_str().unwrap();
    std::fs::hard_link(dir.join(certificate), broken.join(certificate)).unwrap();
    let mut renamed = info.clone();
    renamed["version"] = "0.0.1-e2e".into();
    std::fs::write(broken.join("build.json"), renamed.to_string()).unwrap();
    let metal = "boxcar-0.0.0-e2e-metal.raw.zst";
    std::fs::remove_file(broken.join(metal)).unwrap();
    let mut bytes = std::fs::read(dir.join(metal)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(broken.join(metal), bytes).unwrap();
    let run = lab.run(
        &broken,
        "0.0.1-e2e",
        "staging",
        &["build", "boot-test: [metal]", "publish", "verify"],
    );
    eprintln!("pipeline jobs:\n{}", run.summary().join("\n"));
    assert!(!run.success, "a pipeline with a damaged artifact passed");
    assert!(
        run.summary()
            .iter()
            .any(|l| l.starts_with(" FAIL ") && l.contains("boot-test: [metal]")),
        "{}",
        tail(&run.log, 40)
    );
    assert!(
        run.log.contains("the staged file is not the build's"),
        "{}",
        tail(&run.log, 40)
    );
    assert!(
        !run.summary().iter().any(|l| l.contains("publish")),
        "the publish job ran: {:?}",
        run.summary()
    );
    assert!(!lab.server.object_file("store/releases/0.0.1-e2e").exists());
    let alpha_after = read_json(&lab.server.object_file("store/channels/alpha.json"));
    assert_eq!(alpha_after, alpha, "the channel moved without a publish");
}

/// The `name` of each entry of a JSON array (build.json's files,
/// packages and footprint lists, sfdisk's partitions), in order.
fn names(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].as_str().unwrap())
        .collect()
}

/// The last `lines` lines of a log.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The real, boot-tested build goes through the release pipeline: into a
/// store with a keyring (an offline root key, a CI signing key), published
/// to alpha, promoted to beta (the same bits), and verified from the root
/// key readers pin, by `boxcar verify` and by the stock `minisign` and
/// `sha256sum`.
#[test]
fn published_release_promotes_to_beta_and_verifies() {
    if !can_run("published_release_promotes_to_beta_and_verifies") {
        return;
    }
    let dir = shared_build();
    if !dir.join("evidence/pxe/evidence.json").is_file() {
        let output = boxcar(&["test", "--build", dir.to_str().unwrap()]);
        assert!(output.status.success(), "boot tests failed");
    }
    let lab = tempfile::tempdir_in(scratch_dir()).unwrap();
    // A copy of the configuration with no soak time before beta.
    let project = project_copy(&lab.path().join("project"), &[("beta", "soak", "\"0s\"")]);
    let keys = lab.path().join("keys");
    let store = lab.path().join("store");
    let (project, keys_arg, store_arg) = (
        project.to_str().unwrap(),
        keys.to_str().unwrap(),
        store.to_str().unwrap(),
    );
    let key = format!("{keys_arg}/boxcar.key");
    let public = format!("{keys_arg}/boxcar.pub");
    let root_dir = lab.path().join("root");
    let root_key = format!("{}/boxcar.key", root_dir.display());
    let root = format!("{}/boxcar.pub", root_dir.display());
    for dir in [keys_arg, root_dir.to_str().unwrap()] {
        assert!(boxcar(&["keys", "generate", "--out", dir]).status.success());
    }
    let keyring = boxcar(&[
        "keys",
        "init",
        "--store",
        store_arg,
        "--root",
        &root_key,
        "--signing",
        &public,
    ]);
    assert!(keyring.status.success(), "keys init failed");
    let published = boxcar(&[
        "--project",
        project,
        "publish",
        "--build",
        dir.to_str().unwrap(),
        "--store",
        store_arg,
        "--key",
        &key,
        "--trust",
        &root,
        "--channel",
        "alpha",
        "--json",
    ]);
    assert!(published.status.success(), "publish failed");
    let promoted = boxcar(&[
        "--project",
        project,
        "promote",
        "--store",
        store_arg,
        "--key",
        &key,
        "--trust",
        &root,
        "--to",
        "beta",
        "--json",
    ]);
    assert!(promoted.status.success(), "promote failed");
    let verified = boxcar(&["verify", "--store", store_arg, "--key", &root]);
    assert!(
        verified.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&verified.stdout)
    );

    let release = store.join("releases/0.0.0-e2e");
    host_tool(
        "minisign",
        &[
            "-V",
            "-p",
            &public,
            "-m",
            release.join("release.json").to_str().unwrap(),
        ],
    );
    host_tool(
        "minisign",
        &[
            "-V",
            "-p",
            &public,
            "-m",
            release.join("SHA256SUMS").to_str().unwrap(),
        ],
    );
    assert_sha256sum_check(&release, "SHA256SUMS");
    // Promotion changed no bits: both channels name the same release.json.
    let alpha = read_json(&store.join("channels/alpha.json"));
    let beta = read_json(&store.join("channels/beta.json"));
    assert_eq!(alpha["release_sha256"], beta["release_sha256"]);
    assert_eq!(beta["version"], "0.0.0-e2e");
    let document = read_json(&release.join("release.json"));
    assert_eq!(
        document["usr_root_hash"],
        read_json(&dir.join("build.json"))["usr"]["root_hash"]
    );
    let evidence = document["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 5);
    assert!(evidence.iter().all(|e| e["passed"] == true), "{evidence:?}");
    let build = read_json(&dir.join("build.json"));
    assert_release_states_its_footprint(&document, &build);
    // The release ships the Secure Boot certificate its boot chain is
    // signed with; SHA256SUMS (checked above) covers it.
    let secure_boot = &document["secure_boot"];
    assert_eq!(secure_boot["certificate"], "secure-boot.crt");
    assert_eq!(
        secure_boot["fingerprint_sha256"],
        build["secure_boot"]["certificate_sha256"]
    );
    assert_eq!(
        std::fs::read(release.join("secure-boot.crt")).unwrap(),
        std::fs::read(dir.join("secure-boot.crt")).unwrap()
    );
}

/// release.json states what the release weighs as built (from build.json)
/// and, per platform, as booted (from its boot test).
fn assert_release_states_its_footprint(document: &serde_json::Value, build: &serde_json::Value) {
    let built = &document["footprint"];
    assert_eq!(built["usr_bytes"], build["usr"]["footprint"]["bytes"]);
    assert_eq!(built["usr_stored_bytes"], build["usr"]["filesystem_bytes"]);
    assert_eq!(built["initrd_bytes"], build["kernel"]["initrd"]["bytes"]);
    assert_eq!(
        built["packages"].as_u64(),
        Some(build["packages"].as_array().unwrap().len() as u64)
    );
    assert!(built["uki_bytes"].as_u64().unwrap() > built["initrd_stored_bytes"].as_u64().unwrap());
    for summary in document["evidence"].as_array().unwrap() {
        let booted = &summary["footprint"];
        assert!(
            booted["memory_used_kib"].as_u64().unwrap() > 0,
            "{summary:#}"
        );
        assert!(booted["processes"].as_u64().unwrap() > 0, "{summary:#}");
        // The suite's boots are provisioned, so their config's container
        // may be running; the count says whether it was.
        assert!(booted["containers_running"].is_u64(), "{summary:#}");
        assert!(
            booted["userspace_seconds"].as_f64().unwrap() > 0.0,
            "{summary:#}"
        );
    }
}

/// `boxcar test --build SHARED CASE --json`: whether it passed, and the
/// evidence it printed.
fn boot_test_shared_build(case: &str) -> (bool, Vec<serde_json::Value>) {
    let dir = shared_build();
    let output = boxcar(&["test", "--build", dir.to_str().unwrap(), case, "--json"]);
    let all = serde_json::from_slice(&output.stdout).expect("test --json prints JSON");
    (output.status.success(), all)
}

/// First boots with configs Ignition must refuse: each stops in the initrd
/// with Ignition's error on the console, never reaches multi-user, and
/// halts instead of rebooting.
#[test]
fn bad_ignition_configs_stop_the_first_boot() {
    if !can_run("bad_ignition_configs_stop_the_first_boot") {
        return;
    }
    let dir = shared_build();
    let (passed, all) = boot_test_shared_build("--bad-configs");
    assert!(passed, "bad-config tests failed: {all:#?}");
    let cases: Vec<&str> = all.iter().map(|e| e["case"].as_str().unwrap()).collect();
    assert_eq!(cases, ["bad-config"; 4]);
    let expected = [
        ("malformed", "config is not valid"),
        ("spec-3.4.0", "unsupported config version"),
        ("url-404", "resource not found"),
        ("unwritable-file", "not a directory"),
    ];
    for (evidence, (name, error)) in all.iter().zip(expected) {
        assert!(
            evidence["tampering"].as_str().unwrap().contains(name),
            "{evidence:#}"
        );
        assert_ne!(evidence["outcome"], "powered-off", "{name}");
        assert!(evidence["guest"].get("multi_user").is_none(), "{name}");
        let console =
            std::fs::read_to_string(dir.join(format!("evidence/bad-config-{name}/console.log")))
                .unwrap();
        assert!(
            console
                .lines()
                .any(|l| l.contains("Ignition failed") && l.contains(error)),
            "{name}: no \"Ignition failed: ...{error}\" on the console"
        );
        assert!(console.contains("boxcar: the boot failed"), "{name}");
        assert_eq!(console.matches("Linux version ").count(), 1, "{name}");
    }
}

/// One flipped byte in USR-A: dm-verity refuses the data and the system
/// does not come up on it.
#[test]
fn tampered_usr_is_refused_at_boot() {
    if !can_run("tampered_usr_is_refused_at_boot") {
        return;
    }
    let dir = shared_build();
    let usr_digest_before = host_tool("sha256sum", &[dir.join("usr.raw").to_str().unwrap()]);
    let (passed, all) = boot_test_shared_build("--tamper-usr");
    let evidence = &all[0];
    assert!(passed, "tamper test did not pass: {evidence:#}");
    assert_eq!(evidence["case"], "tamper-usr");
    assert!(evidence["tampering"].as_str().unwrap().contains("USR-A"));
    assert_ne!(
        evidence["outcome"], "powered-off",
        "the tampered system must not complete its boot"
    );
    let errors = evidence["verity_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("is corrupted")),
        "no verity corruption error: {errors:?}"
    );
    assert_ne!(evidence["guest"]["multi_user"], "active");
    // The build itself was not touched: the tampering was done on a copy.
    assert_eq!(
        host_tool("sha256sum", &[dir.join("usr.raw").to_str().unwrap()]),
        usr_digest_before
    );
    assert!(dir.join("evidence/tamper-usr/evidence.json").is_file());
    assert!(!dir.join("evidence/.tamper-usr.partial").exists());
}

/// Copies `path` out of the ESP of the build's disk image with mtools.
fn copy_from_esp(dir: &Path, path: &str, to: &Path) {
    let status = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-n", "-i", &esp_image(dir), &format!("::/{path}")])
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "mcopy could not read {path} from the ESP");
}

/// The build's disk image with its ESP's offset, as mtools names a file
/// system inside an image.
fn esp_image(dir: &Path) -> String {
    let info = read_json(&dir.join("build.json"));
    let esp = info["disk"]["partition_table"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "esp")
        .expect("an ESP");
    format!("{}@@{}", dir.join("disk.raw").display(), esp["offset"])
}

/// One changed character in /usr's root hash signature (slot A's
/// usr-verity-sig partition, still valid JSON and base64): under enforcing
/// Secure Boot the kernel refuses the signature, the initrd says so, and
/// the boot stops before /usr is used. The platform boots show the other
/// side: there the kernel verified the untouched signature.
#[test]
fn tampered_usr_signature_is_refused_under_secure_boot() {
    if !can_run("tampered_usr_signature_is_refused_under_secure_boot") {
        return;
    }
    let (passed, all) = boot_test_shared_build("--tamper-usr-signature");
    let evidence = &all[0];
    assert!(passed, "signature tamper test did not pass: {evidence:#}");
    assert_eq!(evidence["case"], "tamper-usr-signature");
    assert_eq!(evidence["outcome"], "refused");
    assert!(evidence["tampering"]
        .as_str()
        .unwrap()
        .contains("boxcar_0.0.0-e2e_sig"));
    let refusals = evidence["boot_refusals"].as_array().unwrap();
    assert!(
        refusals.iter().any(|line| line
            .as_str()
            .unwrap()
            .contains("the kernel refused the /usr root hash signature")),
        "{refusals:?}"
    );
    let milestones = names_of_events(&evidence["milestones"]);
    assert!(milestones.contains(&"initrd started"), "{milestones:?}");
    assert!(
        !milestones.contains(&"initrd set up dm-verity for /usr"),
        "{milestones:?}"
    );
    assert!(
        !milestones.contains(&"multi-user reached"),
        "{milestones:?}"
    );
}

fn names_of_events(milestones: &serde_json::Value) -> Vec<&str> {
    milestones
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect()
}

/// One flipped byte in the signed UKI on the ESP: under enforcing Secure
/// Boot, with the build's certificate enrolled, systemd-boot refuses to
/// start it and no kernel runs.
#[test]
fn tampered_uki_is_refused_under_secure_boot() {
    if !can_run("tampered_uki_is_refused_under_secure_boot") {
        return;
    }
    let dir = shared_build();
    let (passed, all) = boot_test_shared_build("--tamper-uki");
    let evidence = &all[0];
    assert!(passed, "Secure Boot tamper test did not pass: {evidence:#}");
    assert_eq!(evidence["case"], "tamper-uki");
    assert_eq!(evidence["outcome"], "refused");
    assert!(evidence["tampering"]
        .as_str()
        .unwrap()
        .contains("\\EFI\\Linux\\boxcar_0.0.0-e2e.efi"));
    let refusals = evidence["boot_refusals"].as_array().unwrap();
    assert!(
        refusals.iter().any(|line| {
            let line = line.as_str().unwrap();
            line.contains("boxcar_0.0.0-e2e.efi") && line.contains("Access denied")
        }),
        "{refusals:?}"
    );
    let console = std::fs::read_to_string(dir.join("evidence/tamper-uki/console.log")).unwrap();
    assert!(!console.contains("Linux version"), "a kernel started");
    assert!(evidence["qemu_command"]
        .as_str()
        .unwrap()
        .contains("secboot"));
    // The build was not touched: the tampering was done on a copy, and the
    // UKI on the build's own ESP still verifies.
    let scratch = tempfile::tempdir_in(scratch_dir()).unwrap();
    let uki = scratch.path().join("uki.efi");
    copy_from_esp(dir, "EFI/Linux/boxcar_0.0.0-e2e.efi", &uki);
    let certificate = dir.join("secure-boot.crt");
    let verified = host_tool(
        "sbverify",
        &[
            "--cert",
            certificate.to_str().unwrap(),
            uki.to_str().unwrap(),
        ],
    );
    assert!(verified.contains("Signature verification OK"), "{verified}");
}

/// Runs `boxcar test` of the newer build over the shared one, its agent
/// following the shared stores, with `extra` flags; returns the evidence.
fn agent_update_test(extra: &[&str]) -> (serde_json::Value, bool) {
    let older = shared_build();
    let newer = shared_newer_build();
    let stores = shared_update_stores();
    let mut args = vec![
        "test",
        "--build",
        newer.to_str().unwrap(),
        "--update-from",
        older.to_str().unwrap(),
        "--stores",
        stores.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    let output = boxcar(&args);
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("test --json prints JSON");
    (all[0].clone(), output.status.success())
}

/// A/B update through the node agent: the shared build's own
/// boxcar-update follows channel alpha of a store served to it, downloads,
/// verifies and installs the newer build, and reboots into it from the
/// other slot (strategy immediate). The harness judges the details (slot,
/// boot counter, blessing, fallback kept, the agent's account); this
/// checks the verdict and the facts an operator would look at.
#[test]
fn an_image_updates_itself_through_its_agent_to_the_next_build_in_its_other_slot() {
    if !can_run("an_image_updates_itself_through_its_agent_to_the_next_build_in_its_other_slot") {
        return;
    }
    let newer = shared_newer_build();
    let newer_info = read_json(&newer.join("build.json"));
    let older_info = read_json(&shared_build().join("build.json"));
    assert_ne!(
        newer_info["usr"]["root_hash"],
        older_info["usr"]["root_hash"]
    );
    // The release nodes download: compressed, about the size of the data.
    let release = read_json(&shared_update_stores().join("good/releases/0.0.1-e2e/release.json"));
    let download: u64 = release["update"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["size"].as_u64().unwrap())
        .sum();
    let slot = newer_info["disk"]["partition_table"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "usr-a")
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    assert!(
        download < slot / 2,
        "a node downloads {download} bytes for a {slot}-byte slot"
    );

    // Updates only move forward, and that is said before any VM starts.
    let backwards = boxcar_captured(&[
        "test",
        "--build",
        shared_build().to_str().unwrap(),
        "--update-from",
        newer.to_str().unwrap(),
        "--stores",
        shared_update_stores().to_str().unwrap(),
    ]);
    assert_eq!(backwards.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("needs an older build"));

    let (evidence, passed) = agent_update_test(&[]);
    assert!(passed, "update test did not pass: {evidence:#}");
    assert_eq!(evidence["case"], "update");
    assert_eq!(evidence["version"], "0.0.1-e2e");
    let guest = &evidence["guest"];
    assert_eq!(guest["update.before_version"], "0.0.0-e2e");
    assert_eq!(guest["os_image_version"], "0.0.1-e2e");
    assert_eq!(
        guest["update.usr"],
        "5:boxcar_0.0.1-e2e 6:boxcar_0.0.1-e2e_verity"
    );
    assert!(guest["usr_dm_table"]
        .as_str()
        .unwrap()
        .contains(newer_info["usr"]["root_hash"].as_str().unwrap()));
    let status: serde_json::Value =
        serde_json::from_str(guest["agent_status"].as_str().unwrap()).unwrap();
    assert_eq!(status["running_version"], "0.0.1-e2e");
    assert_eq!(
        status["last_update"]["message"],
        "updated from 0.0.0-e2e to 0.0.1-e2e"
    );
    // docker waits for its socket's first use, but a new version's trial
    // boot asks it to answer before the boot counts as healthy.
    assert_eq!(guest["docker_at_boot_end"], "active");
    assert!(newer
        .join("evidence/update-from-0.0.0-e2e/evidence.json")
        .is_file());
}

/// The FleetLock strategy, after the node refused what it must not
/// install: a paused rollout and a wave not reached download nothing; a
/// tampered /usr in the store is caught by its digest, nothing installed;
/// then from the good store the node installs, waits while the lock server
/// refuses, reboots once granted, and reports its steady state after the
/// healthy boot.
#[test]
fn a_node_waits_for_the_fleet_lock_and_installs_nothing_it_must_not() {
    if !can_run("a_node_waits_for_the_fleet_lock_and_installs_nothing_it_must_not") {
        return;
    }
    let (evidence, passed) = agent_update_test(&["--fleet-lock"]);
    assert!(passed, "fleet-lock update test did not pass: {evidence:#}");
    let guest = &evidence["guest"];
    assert!(guest["agent.check.paused"]
        .as_str()
        .unwrap()
        .contains("rollout is paused"));
    assert!(guest["agent.check.waves"]
        .as_str()
        .unwrap()
        .contains("not yet to this host"));
    let tampered = guest["agent.check.tampered"].as_str().unwrap();
    assert!(tampered.starts_with("exit 1"), "{tampered}");
    assert!(
        tampered.contains("does not match the signed release"),
        "{tampered}"
    );
    assert_eq!(guest["os_image_version"], "0.0.1-e2e");
    let lock_log =
        shared_newer_build().join("evidence/update-fleet-lock-from-0.0.0-e2e/fleet-lock.log");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&lock_log)
        .unwrap_or_else(|e| panic!("reading {}: {e}", lock_log.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The agent reports a steady state when it starts (as Zincati does);
    // then it asks to reboot.
    let paths: Vec<(&str, bool)> = lines
        .iter()
        .map(|l| (l["path"].as_str().unwrap(), l["granted"].as_bool().unwrap()))
        .skip_while(|(path, _)| *path == "/v1/steady-state")
        .collect();
    assert_eq!(
        &paths[..4],
        [
            ("/v1/pre-reboot", false),
            ("/v1/pre-reboot", false),
            ("/v1/pre-reboot", true),
            ("/v1/steady-state", true)
        ]
    );
    assert!(lines
        .iter()
        .all(|l| l["id"] == lines[0]["id"] && l["group"] == "default"));
}

/// A failed update, driven by the agent: the newer build fails the host's
/// own health check on each of its UKI's three tries, systemd-boot falls
/// back to the older build, which comes up whole, and its agent marks the
/// newer build bad, will not install it again, and says so.
#[test]
fn a_failing_update_falls_back_and_the_agent_marks_it_bad() {
    if !can_run("a_failing_update_falls_back_and_the_agent_marks_it_bad") {
        return;
    }
    let (evidence, passed) = agent_update_test(&["--failing-update"]);
    assert!(passed, "fallback test did not pass: {evidence:#}");
    assert_eq!(evidence["case"], "update-fallback");
    assert_eq!(evidence["outcome"], "powered-off");
    let guest = &evidence["guest"];
    assert_eq!(guest["os_image_version"], "0.0.0-e2e");
    assert_eq!(
        guest["update.usr"],
        "2:boxcar_0.0.0-e2e 3:boxcar_0.0.0-e2e_verity"
    );
    assert!(guest["update.ukis"]
        .as_str()
        .unwrap()
        .contains("boxcar_0.0.1-e2e+0-3.efi"));
    let status: serde_json::Value =
        serde_json::from_str(guest["agent_status"].as_str().unwrap()).unwrap();
    assert_eq!(status["bad_versions"][0]["version"], "0.0.1-e2e");
    // An ordinary boot of a node that keeps no container does not wait
    // for docker: the first request starts it (the evidence's own, which
    // the harness checks was answered).
    assert_eq!(guest["docker_at_boot_end"], "inactive");
    assert_eq!(guest["docker_at_boot_condition"], "no");
    // Strategy immediate: the agent rebooted as soon as it had installed.
    let history: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    let installed = history
        .iter()
        .position(|m| m.starts_with("installed 0.0.1-e2e ("))
        .expect("the agent installed the update");
    assert_eq!(history[installed + 1], "rebooting into 0.0.1-e2e");
    assert!(shared_newer_build()
        .join("evidence/update-fallback-from-0.0.0-e2e/evidence.json")
        .is_file());
}

/// Reproducible builds: the same inputs (recipe and overlays, version and
/// SOURCE_DATE_EPOCH, the package cache, the keys) build the same bits,
/// every part, artifact and update file. build.json records those inputs;
/// `boxcar compare` checks the outputs and, when they differ, places the
/// first differing byte in its partition or PE section, and diffoscope
/// explains the smallest differing file.
#[test]
fn a_second_build_from_the_same_inputs_is_bit_for_bit_the_same() {
    if !can_run("a_second_build_from_the_same_inputs_is_bit_for_bit_the_same") {
        return;
    }
    let first = shared_build();
    let info = read_json(&first.join("build.json"));
    for digest in ["recipe_sha256", "overlays_sha256"] {
        let value = info["source"][digest].as_str().unwrap_or_default();
        assert_eq!(
            value.len(),
            64,
            "build.json lacks source.{digest}: {value:?}"
        );
    }
    assert!(info["source_date_epoch"].as_i64().unwrap() > 1_600_000_000);
    assert!(info["packages"].as_array().unwrap().len() > 100);
    let tools = info["tools"].as_array().unwrap();
    let tools_tree = info["tools_tree"].as_array().unwrap();
    for (list, tool) in [
        (tools, "boxcar"),
        (tools, "mkosi"),
        (tools_tree, "systemd-repart"),
        (tools_tree, "erofs-utils"),
        (tools_tree, "systemd-ukify"),
    ] {
        assert!(
            list.iter().any(|t| t["name"] == tool),
            "build.json lacks {tool}'s version"
        );
    }

    let out = scratch_dir().join("rebuild");
    let second = build_like_the_shared_one(&out);
    let (first_arg, second_arg) = (first.to_str().unwrap(), second.to_str().unwrap());
    let text = boxcar_captured(&["compare", "--build", first_arg, "--with", second_arg]);
    let output = boxcar_captured(&[
        "--json", "compare", "--build", first_arg, "--with", second_arg,
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("compare --json prints JSON");
    if !output.status.success() {
        explain_with_diffoscope(first, &second, &report);
    }
    assert!(
        output.status.success() && report["identical"] == true,
        "the rebuild differs:\n{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let compared = names(&report["outputs"]);
    for name in [
        "usr.raw",
        "uki.efi",
        "disk.raw",
        "boxcar-0.0.0-e2e-qemu.qcow2",
    ] {
        assert!(
            compared.contains(&name),
            "{name} not compared: {compared:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Prints diffoscope's account of the smallest output that differs (a
/// bounded report, in the test's log).
fn explain_with_diffoscope(first: &Path, second: &Path, report: &serde_json::Value) {
    let smallest = report["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["same"] == false && !o["first_difference"].is_null())
        .filter_map(|o| {
            let name = o["name"].as_str()?;
            Some((std::fs::metadata(first.join(name)).ok()?.len(), name))
        })
        .min();
    let Some((_, name)) = smallest else { return };
    let explained = Command::new("timeout")
        .args([
            "600",
            "diffoscope",
            "--text",
            "-",
            "--max-report-size",
            "200000",
        ])
        .arg(first.join(name))
        .arg(second.join(name))
        .output();
    match explained {
        Ok(out) => eprintln!(
            "diffoscope on {name}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => eprintln!("diffoscope did not run: {e}"),
    }
}

/// A copy of the checkout whose post-installation script fails: mkosi
/// fails late, after the image tree exists, and the build must leave no
/// build directory. (A broken package list would fail too, but it would
/// also make mkosi drop the incremental cache every other build reuses.)
fn broken_project() -> tempfile::TempDir {
    let temp = tempfile::tempdir_in(scratch_dir()).unwrap();
    project_copy(temp.path(), &[]);
    std::fs::write(
        temp.path().join("recipes/mkosi.postinst"),
        "#!/bin/sh\necho 'boxcar-e2e: failing on purpose' >&2\nexit 3\n",
    )
    .unwrap();
    temp
}

#[test]
fn failed_build_leaves_no_build_directory_and_keeps_its_log() {
    if !can_run("failed_build_leaves_no_build_directory_and_keeps_its_log") {
        return;
    }
    std::fs::create_dir_all(scratch_dir()).unwrap();
    let project = broken_project();
    let out = project.path().join("out");
    let output = boxcar_captured(&[
        "build",
        "--project",
        project.path().to_str().unwrap(),
        "--version",
        "0.0.1-broken",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("build phase `compose` failed"), "{stderr}");
    assert!(
        stderr.contains("boxcar-e2e: failing on purpose"),
        "the error shows the log's tail: {stderr}"
    );
    assert!(
        !out.join("0.0.1-broken").exists(),
        "a failed build left its directory"
    );
    assert!(
        !out.join(".0.0.1-broken.partial").exists(),
        "a failed build left its staging directory"
    );
    let log = std::fs::read_to_string(out.join("0.0.1-broken.failed.log")).unwrap();
    assert!(log.contains("boxcar-e2e: failing on purpose"));
}

#[test]
fn interrupted_build_leaves_no_build_directory() {
    if !can_run("interrupted_build_leaves_no_build_directory") {
        return;
    }
    std::fs::create_dir_all(scratch_dir()).unwrap();
    let temp = tempfile::tempdir_in(scratch_dir()).unwrap();
    let out = temp.path().join("out");
    let child = Command::new(boxcar_bin())
        .args([
            "build",
            "--version",
            "0.0.2-interrupted",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(project_root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let mkosi get going, then stop the build the way CI would (SIGTERM).
    let staging = out.join(".0.0.2-interrupted.partial");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !staging.join("build.log").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an interrupted build exits 1: {stderr}"
    );
    assert!(
        stderr.contains("0.0.2-interrupted was interrupted"),
        "{stderr}"
    );
    assert!(!out.join("0.0.2-interrupted").exists());
    assert!(!staging.exists(), "the staging directory was left behind");
    assert!(out.join("0.0.2-interrupted.failed.log").exists());
    assert_no_mkosi_left_running();
}

fn assert_no_mkosi_left_running() {
    std::thread::sleep(Duration::from_secs(2));
    let ps = host_tool("ps", &["-eo", "args"]);
    let leftovers: Vec<&str> = ps
        .lines()
        .filter(|l| l.contains("-m mkosi") && l.contains("0.0.2-interrupted"))
        .collect();
    assert!(leftovers.is_empty(), "mkosi still running: {leftovers:?}");
}

/// Sanity: the e2e helpers point at this checkout.
#[test]
fn suite_finds_the_checkout() {
    assert!(Path::new(&project_root())
        .join("recipes/mkosi.conf")
        .is_file());
}
