//! The command line: every clap type, and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::channel::ChannelName;
use crate::platform::PlatformId;
use crate::version::Version;

/// Build, boot-test and ship Boxcar Linux images.
///
/// Boxcar Linux is an immutable container host: a read-only /usr protected
/// by dm-verity, A/B updates, containerd and Docker under systemd. This tool
/// composes it from the mkosi recipes in recipes/ and proves each image in a
/// VM before it ships.
///
/// Results go to stdout (as JSON with --json); progress and logs go to
/// stderr. Exit status: 0 on success, 1 on failure, 2 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "boxcar", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The Boxcar checkout (recipes/, overlays/, channels/). Default:
    /// $BOXCAR_PROJECT, else the nearest directory at or above the current
    /// one that has recipes/mkosi.conf.
    #[arg(long, global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,

    /// Where package downloads, mkosi's incremental image and its tools tree
    /// are kept between builds. Default: $BOXCAR_CACHE_DIR, else
    /// /var/cache/boxcar.
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Print the result as JSON on stdout (for CI and other programs).
    #[arg(long, global = true)]
    pub json: bool,

    /// Show no progress on stderr; errors are still printed.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// The S3 endpoint of s3:// stores, e.g. http://127.0.0.1:9000.
    /// Default: $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL, else AWS in
    /// the region. Credentials come from $AWS_ACCESS_KEY_ID,
    /// $AWS_SECRET_ACCESS_KEY (and $AWS_SESSION_TOKEN).
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// The region of s3:// stores. Default: $AWS_REGION, else
    /// $AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long, global = true, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Address buckets as ENDPOINT/BUCKET/ rather than BUCKET.ENDPOINT/
    /// (most servers other than AWS; automatic for IP addresses and
    /// localhost).
    #[arg(long, global = true)]
    pub s3_path_style: bool,
}

impl GlobalArgs {
    /// What the command line says about s3:// stores.
    pub fn s3_options(&self) -> crate::release::backend::S3Options {
        crate::release::backend::S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Build(BuildArgs),
    Test(TestArgs),
    Check(CheckArgs),
    Platforms(PlatformsArgs),
    Footprint(FootprintArgs),
    Compare(CompareArgs),
    Keys(KeysArgs),
    Publish(PublishArgs),
    Promote(PromoteArgs),
    Verify(VerifyArgs),
    Repair(RepairArgs),
    Renew(RenewArgs),
    Provision(ProvisionArgs),
    Download(DownloadArgs),
    Stage(StageArgs),
    /// Helpers that boxcar runs itself (not for people).
    #[command(hide = true)]
    Internal(InternalArgs),
}

/// Signing keys and the store's keyring.
///
/// A store's keyring (keys.json) names its root keys, which sign only the
/// keyring and are kept offline, and its signing keys, which sign
/// releases, channel documents and the index. Readers pin a root key and
/// follow every keyring change from there; a key removed from the keyring
/// signs nothing they accept. Each change makes a new keyring (serial + 1)
/// that must be signed by enough of the current root keys (the threshold)
/// and, when the root changes, enough of the new ones: pass each root
/// secret key that signs with --root.
///
/// A change killed after writing keys/SERIAL.json but before keys.json is
/// finished by the next keys command, which then stops without making its
/// own change: run it again if that change is still needed.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    Generate(KeysGenerateArgs),
    Init(KeysInitArgs),
    Add(KeysAddArgs),
    Remove(KeysRemoveArgs),
    Renew(KeysRenewArgs),
}

/// Make an Ed25519 key pair.
///
/// Writes DIR/NAME.key (the secret key, mode 0600: keep it out of the
/// repository and out of logs) and DIR/NAME.pub (the public key, in
/// minisign's format: what operators pin and what `minisign -V -p` reads).
#[derive(Debug, Args)]
pub struct KeysGenerateArgs {
    /// The directory to write the two files into (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The files' base name.
    #[arg(long, default_value = "boxcar")]
    pub name: String,
}

/// Where a keyring change is written and who signs it.
#[derive(Debug, Args)]
pub struct KeyringArgs {
    /// The release store: a directory, or s3://BUCKET/PREFIX (an
    /// S3-compatible bucket; see --s3-endpoint and the AWS_* variables).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// A root secret key that signs the new keyring (repeatable: as many as
    /// the threshold asks, of the current root and of the new one).
    #[arg(long = "root", value_name = "FILE", required = true)]
    pub roots: Vec<PathBuf>,
    /// Other root public keys to trust while reading the current keyring.
    /// Default: $BOXCAR_TRUSTED_KEYS.
    #[arg(long = "trust", value_name = "FILE")]
    pub trust: Vec<PathBuf>,
    /// How many root keys must sign the next keyring. Default: unchanged
    /// (1 for the first keyring).
    #[arg(long)]
    pub threshold: Option<u32>,
    /// How long the new keyring is valid; readers refuse the store after
    /// that, so renew it in time (`boxcar keys renew`).
    #[arg(long, default_value = "365d", value_name = "DURATION")]
    pub valid_for: crate::duration::HumanDuration,
}

/// Make a store's first keyring.
///
/// Its root keys are the --root keys (make the first root the key readers
/// already pinned, if the store was signed by one key until now); its
/// signing keys are the --signing public keys.
#[derive(Debug, Args)]
pub struct KeysInitArgs {
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// A public key that signs releases, channel documents and the index
    /// (repeatable).
    #[arg(long = "signing", value_name = "FILE", required = true)]
    pub signing: Vec<PathBuf>,
}

/// Add a key to the store's keyring, as a signing key or a root key.
///
/// A new root key must sign the keyring that adds it, along with the
/// current root's threshold: pass both with --root.
#[derive(Debug, Args)]
pub struct KeysAddArgs {
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// The public key file to add.
    #[arg(long, value_name = "FILE")]
    pub public: PathBuf,
    /// Which keys it joins.
    #[arg(long, value_enum, default_value_t = RoleArg::Signing)]
    pub role: RoleArg,
    /// Who holds it, or why it is added, for the record.
    #[arg(long, default_value = "key rotation")]
    pub note: String,
}

/// Remove a key from the store's keyring (rotation done, or a key lost).
///
/// Readers that follow the keyring refuse anything the key signs from now
/// on, old documents included: re-sign them first (`boxcar renew --all`
/// with a key that stays).
#[derive(Debug, Args)]
pub struct KeysRemoveArgs {
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// The id of the key to remove (16 hex digits, as `boxcar keys
    /// generate` and `minisign` print it).
    #[arg(long)]
    pub key_id: String,
}

/// Renew the store's keyring: the same keys, a new expiry.
#[derive(Debug, Args)]
pub struct KeysRenewArgs {
    #[command(flatten)]
    pub keyring: KeyringArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Signs keyrings only; keep it offline.
    Root,
    /// Signs releases, channel documents and the index.
    Signing,
}

/// The keys a writer trusts besides its own.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// A root public key of the store (repeatable): the writer follows the
    /// store's keyring from it, as readers do. Default: $BOXCAR_TRUSTED_KEYS.
    /// Not needed while the store has no keyring.
    #[arg(long = "trust", value_name = "FILE")]
    pub trust: Vec<PathBuf>,
}

/// Re-sign documents before they expire.
///
/// Renews every channel document with less than half of its validity left:
/// same content, serial + 1, a new expiry (the channel's valid-for). With
/// --all, renews every channel document, and signs every release's
/// release.json and SHA256SUMS again with this key (their bytes do not
/// change): the step before removing an old key from the keyring. The
/// index is rewritten when anything was renewed. Run it daily from CI.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The release store: a directory, or s3://BUCKET/PREFIX (an
    /// S3-compatible bucket; see --s3-endpoint and the AWS_* variables).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The signing key. Default: $BOXCAR_SIGNING_KEY_FILE, or the key in
    /// $BOXCAR_SIGNING_KEY.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Renew everything, due or not, and re-sign every release.
    #[arg(long)]
    pub all: bool,
}

/// Publish a tested build to the release store.
///
/// Copies the build's artifacts into STORE/releases/VERSION/ (checking each
/// against build.json while copying), with the boot-test evidence, writes a
/// SHA256SUMS (for `sha256sum --check`) and release.json, each with a
/// minisign signature, and only then, if --channel is given, points that
/// channel at the release. A published version is never replaced. An
/// interrupted publish leaves the store as it was: the release is assembled
/// under a temporary name and renamed into place whole.
///
/// The channel is not moved to an older release than it has (unless
/// --allow-downgrade): such a publish is refused before anything is copied.
/// A release the channel carried before and has moved on from is not
/// pointed at again, so running a publish again never moves a channel back.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The build directory (OUT/VERSION from `boxcar build`, tested by
    /// `boxcar test`).
    #[arg(long, value_name = "DIR")]
    pub build: PathBuf,
    /// The release store: a directory (created if needed), or s3://BUCKET/PREFIX (an
    /// S3-compatible bucket; see --s3-endpoint and the AWS_* variables).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The secret signing key. Default: $BOXCAR_SIGNING_KEY_FILE, or the key
    /// itself in $BOXCAR_SIGNING_KEY. The key is never printed.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Point this channel at the release (one CI publishes to, not one
    /// filled by promotion). Its evidence policy applies.
    #[arg(long)]
    pub channel: Option<ChannelName>,
    /// Allow pointing the channel at an older release than it has.
    #[arg(long, requires = "channel")]
    pub allow_downgrade: bool,
}

/// Promote a release to a channel from the channel it is promoted from.
///
/// The source channel comes from channels/TO.toml (promotes-from). The
/// release (default: what the source channel points at now) must have
/// been in the source channel for the channel's soak time, have passing
/// boot-test evidence if the channel requires it, not be older than what
/// the channel has (unless --allow-downgrade), and its artifacts must match
/// their signed digests. Then the new channel document is written, read
/// back and checked. The bits are not copied or changed: only the signed
/// channel document is new. Promoting what the channel already has changes
/// nothing.
///
/// A release reaches nodes in the waves of the channel's `waves`.
/// `--pause` stops a rollout (nodes that have not started updating hold
/// where they are) and `--resume` continues it where it stopped; any
/// channel, alpha included, can be paused.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The release store: a directory, or s3://BUCKET/PREFIX (an
    /// S3-compatible bucket; see --s3-endpoint and the AWS_* variables).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The secret signing key (as for `boxcar publish`).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// The channel to promote into.
    #[arg(long)]
    pub to: ChannelName,
    /// The release to promote. Default: what the source channel points at.
    #[arg(long)]
    pub version: Option<String>,
    /// Show the change and the checks, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow pointing the channel at an older release than it has.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Pause the rollout of what the channel points at (promotes nothing).
    #[arg(long, conflicts_with_all = ["version", "allow_downgrade", "resume"])]
    pub pause: bool,
    /// Resume a paused rollout where it stopped (promotes nothing).
    #[arg(long, conflicts_with_all = ["version", "allow_downgrade"])]
    pub resume: bool,
}

/// Check a release store: signatures, digests, channel expiry and serials.
///
/// Reads the store as a client would (a directory, file://, http(s)://, or
/// s3://BUCKET/PREFIX through signed reads with the writers' credentials):
/// the keyring, the signed index, every channel document (signature, expiry,
/// serial not behind the index's, consistent history, pointing at a
/// published release) and every release (signature, SHA256SUMS, every
/// artifact's sha256). Exits 1 if anything is wrong.
///
/// It never changes the store, so it can check a read-only mount or a
/// mirror. What an interrupted writer left behind in a directory store is
/// reported as a warning; `boxcar repair` (or the next publish or promote)
/// cleans it up.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store: a directory, a file:// URL, an http(s):// URL or
    /// s3://BUCKET/PREFIX.
    #[arg(long, value_name = "LOCATION")]
    pub store: String,
    /// A trusted public key file (repeatable). Keys introduced by a keyring
    /// one of these signed are trusted too.
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
}

/// Undo what interrupted writers left in a store.
///
/// Takes the writers' lock (waiting for a writer at work), then puts back
/// any document whose replacement was cut short (with its signature, as
/// the pair it was) and removes half-assembled releases. Every publish and
/// promote does this first; this command does only that. It needs no key:
/// it only restores what was signed before.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The release store: a directory, or s3://BUCKET/PREFIX (an
    /// S3-compatible bucket; see --s3-endpoint and the AWS_* variables).
    #[arg(long, value_name = "STORE")]
    pub store: String,
}

/// Write an Ignition config onto a Boxcar disk before its first boot.
///
/// For machines whose platform cannot hand them a config (bare metal): run
/// it on the downloaded image (the metal artifact, decompressed with
/// `boxcar download --decompress`) before writing it to the machine's disk,
/// or on that disk afterwards (/dev/sdX: the whole disk). The config is
/// checked with ignition-validate first (this image's Ignition 2.14 reads
/// Ignition specs 3.0 to 3.3; Butane's flatcar 1.0.0 variant gives 3.3.0),
/// and written only onto a disk whose partitions are Boxcar's and that has
/// never booted: into ROOT, where the first boot applies it and then
/// removes it. Must run as root.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The disk: an image file or a block device.
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,
    /// The Ignition config (JSON; convert Butane YAML with `butane` first).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// How patient to be with a store's server.
#[derive(Clone, Copy, Debug, Args)]
pub struct NetworkArgs {
    /// Give up on a connection that sends nothing for this many seconds (a
    /// whole document may take four times as long).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// How many times to retry after a transient network error (a lost
    /// connection, a timeout, a server error).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

/// Download a verified image for a platform, from a channel or by version.
///
/// Fetches the channel's signed document (or the store's signed index) and
/// checks it against the pinned keys: an expired document, or one with a
/// lower serial than this machine has already seen (a rollback), is
/// refused. The release's signed release.json then gives the size and
/// sha256 of every file, and each file is hashed as it downloads (one pass)
/// into NAME.part, which becomes NAME only when it matches; a mismatch
/// removes it and exits 1. An interrupted download resumes from its .part
/// with an HTTP Range request on the next run (and is still verified end to
/// end). Transient network errors are retried with backoff; a 404 or a
/// signature failure is not.
///
/// The store and the trusted keys default to the project's (builder's
/// defaults.rs); --store and --key, or $BOXCAR_STORE and
/// $BOXCAR_TRUSTED_KEYS, override them.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The channel whose current release to fetch (alpha, beta, stable).
    #[arg(long)]
    pub channel: Option<String>,
    /// The platform whose artifact to fetch (see `boxcar platforms`).
    #[arg(long, required_unless_present = "list")]
    pub platform: Option<String>,
    /// A specific release instead of the channel's current one (with
    /// --channel, it must be one the channel has carried).
    #[arg(long)]
    pub version: Option<String>,
    /// The store: http(s)://, file:// or a directory. Default:
    /// $BOXCAR_STORE, else the project's store.
    #[arg(long, value_name = "LOCATION")]
    pub store: Option<String>,
    /// A trusted public key file (repeatable). Default: $BOXCAR_TRUSTED_KEYS,
    /// else the project's release keys.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
    /// Where to put the files.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub to: PathBuf,
    /// Decompress a compressed raw image (the metal .raw.zst) after
    /// verifying it, keeping only the raw image.
    #[arg(long)]
    pub decompress: bool,
    /// List the store's releases, platforms and sizes (with --channel,
    /// only what that channel has carried) instead of downloading.
    #[arg(long)]
    pub list: bool,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Where the highest channel serials seen are kept (rollback
    /// protection). Default: $XDG_STATE_HOME/boxcar/seen-serials.json.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

/// Hand a build between CI jobs through object storage.
///
/// A pipeline's jobs share no disk: the build job pushes the build to a
/// staging prefix (s3://BUCKET/PREFIX, one per build), each platform's
/// boot-test job pulls build.json and that platform's artifacts and pushes
/// its evidence back, and the publish job pulls everything. Every file
/// pulled is checked against build.json's digests (or the sha256 its pusher
/// recorded); pushing replaces what is staged, so a retried job can push
/// again. Credentials and endpoint as for s3:// stores (see --s3-endpoint).
#[derive(Debug, Args)]
pub struct StageArgs {
    #[command(subcommand)]
    pub command: StageCommand,
}

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Push a build directory (or one platform's evidence) to the prefix.
    Push(StagePushArgs),
    /// Pull a staged build (or one platform's part of it) into a directory.
    Pull(StagePullArgs),
}

#[derive(Debug, Args)]
pub struct StagePushArgs {
    /// The build directory.
    #[arg(long, value_name = "DIR")]
    pub build: PathBuf,
    /// The staging prefix, s3://BUCKET/PREFIX.
    #[arg(long, value_name = "S3")]
    pub to: String,
    /// Push only this platform's boot-test evidence (evidence/PLATFORM/).
    #[arg(long, value_name = "PLATFORM")]
    pub evidence: Option<String>,
}

#[derive(Debug, Args)]
pub struct StagePullArgs {
    /// The staging prefix, s3://BUCKET/PREFIX.
    #[arg(long, value_name = "S3")]
    pub from: String,
    /// The directory to pull into (created if needed).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Pull only build.json and this platform's artifacts.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
pub struct InternalArgs {
    #[command(subcommand)]
    pub command: InternalCommand,
}

#[derive(Debug, Subcommand)]
pub enum InternalCommand {
    /// Answer HTTP requests on stdin/stdout: the boot tests' PXE file server
    /// and imitation instance metadata service, run by qemu per connection.
    HttpServe(HttpServeArgs),
}

#[derive(Debug, Args)]
pub struct HttpServeArgs {
    /// The directory of the files to serve.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A file name that may be fetched (repeatable); nothing else is served.
    #[arg(long = "file")]
    pub files: Vec<String>,
    /// Imitate the EC2 instance metadata service, handing out this hostname.
    #[arg(long)]
    pub imds_hostname: Option<String>,
    /// With --imds-hostname: the instance's user data, from this file.
    #[arg(long)]
    pub imds_user_data: Option<PathBuf>,
    /// Serve this directory's whole tree (release stores).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Act as a FleetLock server, logging each request to this file.
    #[arg(long)]
    pub fleet_lock_log: Option<PathBuf>,
    /// With --fleet-lock-log: refuse this many pre-reboot requests first.
    #[arg(long, default_value_t = 0)]
    pub fleet_lock_refusals: u32,
}

/// List the platforms Boxcar ships for (recipes/platforms.toml).
///
/// For each: its id, artifact format, the files a build makes for it, the
/// kernel command line it adds, its agents, and the hardware its boot test
/// presents (firmware, disk bus, NIC).
#[derive(Debug, Args)]
pub struct PlatformsArgs {
    /// Print the table as Markdown (what README.md shows).
    #[arg(long)]
    pub markdown: bool,
}

/// Show where the bytes of a build's /usr and initrd go, biggest first.
///
/// Reads the footprint in build.json: every regular file of /usr as built
/// (before compression, each hard link once), summed by package and by
/// directory, with what no package owns (files made at build time, the
/// overlays); and the UKI's initrd, decompressed, by directory and by
/// file. With --json, both as build.json has them.
#[derive(Debug, Args)]
pub struct FootprintArgs {
    /// The build directory (holding build.json).
    #[arg(long, value_name = "DIR")]
    pub build: PathBuf,
    /// How many packages and directories to list.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

/// Check that two builds are the same bits, or show where they part.
///
/// Compares the inputs both build.json files record (version,
/// SOURCE_DATE_EPOCH, git commit, digests of recipes/ and overlays/, every
/// package version, the tool and tools-tree versions, the Secure Boot
/// certificate, the update agent) and lists those that differ; then every
/// output (parts, artifacts, update payload, certificate): each file is
/// hashed and must match its build.json (else an error: the directory
/// changed after its build), then the two compared by sha256. For an output
/// that differs, the first differing byte is found and placed: in which
/// partition of a disk image, in which PE section of a UKI or addon.
/// `diffoscope BUILD/FILE WITH/FILE` explains a difference in detail.
///
/// Exits 0 when every output is identical, 1 when any differs.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// One build directory (holding build.json).
    #[arg(long, value_name = "DIR")]
    pub build: PathBuf,
    /// The build directory to compare it with.
    #[arg(long, value_name = "DIR")]
    pub with: PathBuf,
}

/// Compose a Boxcar Linux image and package it for every platform.
///
/// Runs mkosi on recipes/ (with the trees in overlays/) once and writes
/// OUT/VERSION/: the parts (the GPT disk image disk.raw, its /usr and verity
/// partitions usr.raw and usr-verity.raw, the UKI uki.efi with the kernel and
/// initrd inside it, the root tree, one UKI addon per platform, mkosi's
/// package manifest), every platform's artifact (see `boxcar platforms`:
/// qcow2, OVA, AWS raw, metal raw.zst, PXE kernel + initrd + iPXE script),
/// the full log (build.log), and build.json, which records the version,
/// channel, /usr root hash, partition table, the size and sha256 of every
/// part and artifact, the package list and each phase's duration.
///
/// Every artifact carries the same /usr, byte for byte; only the platform's
/// kernel command line addon on the ESP differs.
///
/// The image is checked before the build counts as done: the UKI's usrhash=
/// must match the /usr partition, and veritysetup must verify /usr against
/// it. A build that fails or is interrupted leaves no OUT/VERSION/ behind;
/// its log is kept as OUT/VERSION.failed.log.
///
/// Must run as root. The first build downloads a few hundred MB of packages
/// into the cache; later builds reuse them and take seconds.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The channel the build is for (a file in channels/). It is recorded in
    /// build.json; it does not change the image, so a release can later be
    /// promoted unchanged.
    #[arg(long, default_value = "alpha")]
    pub channel: ChannelName,

    /// The image version (digits first; letters, digits and . + ~ ^ -).
    /// Default: the UTC time, as YYYY.MMDD.HHMMSS.
    #[arg(long)]
    pub version: Option<Version>,

    /// The directory that receives VERSION/.
    #[arg(long, default_value = "build", value_name = "DIR")]
    pub out: PathBuf,

    /// Resolve packages from the mirror again instead of reusing the cached
    /// installation (picks up security updates; slower).
    #[arg(long)]
    pub refresh: bool,

    /// Package only this platform's artifact (repeatable). Default: every
    /// platform in recipes/platforms.toml. The composed image is the same
    /// either way; this only skips packaging.
    #[arg(long = "platform", value_name = "ID", conflicts_with = "no_artifacts")]
    pub platforms: Vec<PlatformId>,

    /// Compose and record the parts only; package no artifact (the quick
    /// loop while working on the recipe).
    #[arg(long)]
    pub no_artifacts: bool,

    /// The node agent to put in the image. Default: the boxcar-update next
    /// to this program (`cargo build --release -p boxcar-update`).
    #[arg(long, value_name = "FILE")]
    pub update_agent: Option<PathBuf>,

    /// A store public key the image's agent trusts (repeatable). Default:
    /// the project's signing/keys/*.pub. A test build passes its test key.
    #[arg(long = "update-key", value_name = "FILE")]
    pub update_keys: Vec<PathBuf>,

    /// The store the image's agent follows by default: an https:// or
    /// http:// URL, or an absolute directory path (or file:// URL) on the
    /// node. Without it, nodes follow nothing until provisioning sets
    /// store.url in /etc/boxcar/update.toml.
    #[arg(long, value_name = "URL")]
    pub update_store: Option<String>,

    /// Sign the boot chain for Secure Boot with this private key (PEM):
    /// systemd-boot, the UKI and every platform addon. Default:
    /// $BOXCAR_SECURE_BOOT_KEY_FILE, or the key itself in
    /// $BOXCAR_SECURE_BOOT_KEY. Without a key the build is unsigned. The
    /// key never enters the build; its certificate ships as
    /// secure-boot.crt for enrollment.
    #[arg(long, value_name = "FILE")]
    pub secure_boot_key: Option<PathBuf>,

    /// The X.509 certificate (PEM) of --secure-boot-key. Default:
    /// $BOXCAR_SECURE_BOOT_CERTIFICATE_FILE.
    #[arg(long, value_name = "FILE")]
    pub secure_boot_certificate: Option<PathBuf>,
}

/// Boot every artifact of a build in qemu and record evidence of what it is.
///
/// Each platform's artifact is booted the way that platform presents it
/// (see `boxcar platforms`): the qcow2 on virtio under UEFI; the OVA's VMDK,
/// after its manifest and OVF are checked against its files, on a SATA
/// controller with a VMXNET3 NIC and VMware's SMBIOS identity; the AWS raw disk as NVMe under UEFI, with an imitation instance
/// metadata service; the metal image decompressed onto a larger SATA disk;
/// the PXE artifact by a real network boot (iPXE fetching its script over
/// TFTP, kernel and initrd over HTTP). Artifacts are never modified.
///
/// From inside each guest it checks: multi-user was reached; /usr is mounted
/// read-only from a dm-verity device whose root hash is build.json's; writes
/// to /usr are refused; ROOT grew to fill the disk (a tmpfs root for PXE);
/// the platform id is the expected one and the platform's agents are active
/// (and no other platform's); no unit failed; the update service
/// (systemd-sysupdate) runs cleanly with nothing staged, or is skipped on a
/// diskless boot; containerd and docker are active, and containerd loaded
/// every plugin it was not told to skip; docker runs a container imported
/// from a local file (no registry); and the boot time.
///
/// Each artifact is provisioned on its first boot by an Ignition config
/// delivered the platform's way (qemu's fw_cfg, EC2 user data from the
/// imitation metadata service, a config URL in the iPXE script, and for
/// metal `boxcar provision` on a copy of the disk; VMware's guestinfo
/// cannot be emulated, so its boot reads fw_cfg): it gives `core` a key,
/// writes a file, sets the hostname and enables a unit running a container.
/// The host then logs in with OpenSSH through a loopback port forward and
/// checks all of it, sudo, and that passwords are refused; disk platforms
/// with their own delivery are rebooted and checked again: Ignition must
/// not run twice and everything must persist. --no-provision boots them unprovisioned: no SSH
/// port may be open.
///
/// Nothing for the test is built into the image: a small extra disk brings
/// the test script and container, and a systemd unit is passed in as a
/// credential through SMBIOS.
///
/// Writes BUILD/evidence/PLATFORM/evidence.json, summary.txt and console.log.
/// Exits 1 if any check fails.
///
/// With --tamper-usr, a copy of the image with one byte of /usr (slot A)
/// flipped is booted instead, and the test passes only if dm-verity catches
/// it and the system does not run on the tampered data.
///
/// A build signed for Secure Boot (`boxcar build --secure-boot-key`) is
/// booted under enforcing Secure Boot: OVMF's Secure Boot firmware with the
/// build's secure-boot.crt enrolled as PK, KEK and db and nothing else
/// trusted (the update cases too when the older build was signed with the
/// same certificate; otherwise they boot on the plain firmware). Its boots
/// also check that the firmware reports Secure Boot on, that the kernel is
/// locked down, and that the kernel verified the /usr root hash signature
/// before the initrd set up /usr.
///
/// With --tamper-uki, a copy of a signed build's disk image with one byte
/// of its UKI flipped on the ESP is booted under Secure Boot, and the test
/// passes only if systemd-boot refuses to start it and no kernel runs.
///
/// With --tamper-usr-signature, a copy of a signed build's disk image whose
/// /usr root hash signature (slot A's usr-verity-sig partition) has one
/// character of its signature changed is booted under Secure Boot, and the
/// test passes only if the kernel refuses the signature and the boot stops
/// before /usr is used. Every platform boot of a signed build checks the
/// other side: the kernel verified the untouched signature.
///
/// With --update-from OLD --stores DIR, the disk image of the older build
/// OLD is booted and its own update agent (boxcar-update) is pointed at
/// the release store DIR/good/ (which must carry this build on the build's
/// channel), served to the guest over HTTP: the agent alone downloads,
/// verifies and installs the update (into the idle A/B slot) and reboots.
/// The test passes only if the second boot runs this build from the other
/// slot, with boot counting, blessed, /etc and /var brought up to date
/// for the new /usr (ldconfig, sysusers, update-done), the old version
/// still there to fall back to, and the agent reports it settled.
/// Evidence goes to BUILD/evidence/update-from-OLDVERSION/.
///
/// With --fleet-lock as well, the agent's strategy is fleet_lock against a
/// lock server the test runs, which refuses the first two reboot requests:
/// the node must wait, reboot once granted and report its steady state
/// after the healthy boot. Before that, every other store in DIR (paused/,
/// waves/, tampered/, ...) is checked once with `boxcar-update check`: each
/// must download and install nothing, for its reason.
/// Evidence: BUILD/evidence/update-fleet-lock-from-OLDVERSION/.
///
/// With --failing-update instead, a health check on the host fails this
/// build on purpose: each of the new UKI's tries must fail and reboot,
/// systemd-boot must fall back to the older build, which boots from its
/// own slot with every check of a normal boot, and its agent must mark
/// this build bad and not install it again.
/// Evidence: BUILD/evidence/update-fallback-from-OLDVERSION/.
///
/// With --bad-configs, the qemu artifact boots four times with configs
/// Ignition must refuse: each first boot must stop in the initrd with
/// Ignition's error on the console, and halt rather than reboot.
/// Evidence: BUILD/evidence/bad-config-NAME/.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The build directory (OUT/VERSION from `boxcar build`).
    #[arg(long, value_name = "DIR")]
    pub build: PathBuf,

    /// Boot only this platform's artifact (repeatable). Default: every
    /// artifact the build has.
    #[arg(long = "platform", value_name = "ID")]
    pub platforms: Vec<PlatformId>,

    /// Boot a copy with one byte of /usr flipped, and expect it to be caught.
    #[arg(long, conflicts_with_all = ["platforms", "update_from"])]
    pub tamper_usr: bool,

    /// Boot a copy with one byte of the UKI flipped, under enforcing Secure
    /// Boot, and expect it refused (the build must be signed).
    #[arg(long, conflicts_with_all = ["platforms", "update_from", "tamper_usr", "bad_configs"])]
    pub tamper_uki: bool,

    /// Boot a copy whose /usr root hash signature was altered, under
    /// enforcing Secure Boot, and expect the kernel to refuse it (the
    /// build must be signed).
    #[arg(
        long,
        conflicts_with_all = ["platforms", "update_from", "tamper_usr", "tamper_uki", "bad_configs"]
    )]
    pub tamper_usr_signature: bool,

    /// Boot the older build in DIR and let its update agent update it to
    /// this build from --stores; check the VM comes back running this build.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "platforms",
        requires = "stores"
    )]
    pub update_from: Option<PathBuf>,

    /// With --update-from: a directory of release stores served to the
    /// guest; good/ carries this build.
    #[arg(long, value_name = "DIR", requires = "update_from")]
    pub stores: Option<PathBuf>,

    /// With --update-from: the fleet_lock strategy against a test lock
    /// server that refuses first; the other stores are checked before.
    #[arg(long, requires = "update_from", conflicts_with = "failing_update")]
    pub fleet_lock: bool,

    /// With --update-from: this build fails its health check on purpose;
    /// expect the older build back and this one marked bad.
    #[arg(long, requires = "update_from")]
    pub failing_update: bool,

    /// The accelerator: auto uses KVM only if it can really run a VM here
    /// (checked by booting the firmware), else software emulation.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,

    /// Give up on the boot after this many seconds. Default: 300 with KVM,
    /// 900 with software emulation.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// The VM's memory, in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    pub memory: u32,

    /// The VM's CPU count.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,

    /// Boot every platform without an Ignition config (as a machine nobody
    /// provisioned: no SSH, every account locked). By default each
    /// platform gets one its way (VMware's through qemu's fw_cfg, since its
    /// guestinfo cannot be emulated).
    #[arg(long)]
    pub no_provision: bool,

    /// Instead of the platforms, boot four configs Ignition must refuse (a
    /// malformed one, Ignition spec 3.4.0, one whose URL answers 404, one
    /// with a file that cannot be written):
    /// each first boot must stop with the error on the console.
    #[arg(long, conflicts_with_all = ["tamper_usr", "update_from"])]
    pub bad_configs: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// KVM where it works, else software emulation.
    Auto,
    /// KVM, or fail.
    Kvm,
    /// Software emulation (TCG).
    Tcg,
}

/// Check the configuration and the host without building anything.
///
/// Parses every recipe file and channel file (a mistake is reported with
/// its file, line and key) and checks that the tools `boxcar build` and
/// `boxcar test` need are installed in recent enough versions.
#[derive(Debug, Args)]
pub struct CheckArgs {}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn build_defaults() {
        let cli = Cli::try_parse_from(["boxcar", "build"]).unwrap();
        let Command::Build(args) = cli.command else {
            panic!("not build")
        };
        assert_eq!(args.channel.as_str(), "alpha");
        assert_eq!(args.out, PathBuf::from("build"));
        assert!(args.version.is_none());
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        for argv in [
            &["boxcar", "build", "--version", "../x"][..],
            &["boxcar", "build", "--channel", "Alpha"],
            &["boxcar", "test"],
            &["boxcar", "test", "--build", "b", "--accel", "hvf"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}
