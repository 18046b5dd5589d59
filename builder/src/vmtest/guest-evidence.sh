#!/bin/sh
# Boxcar boot test, guest side.
#
# The boot-test harness (`boxcar test`) puts this script on a small disk it
# attaches to the VM, and starts it through a unit it passes in as a systemd
# credential: nothing of it is in the image. It records what the running
# system looks like as key=value lines on a virtio-serial port the harness
# reads after the VM has stopped, then powers the VM off. The harness, not
# this script, decides what passes.
#
# Arguments: the directory the test disk was unpacked into.

testdata="${1:?usage: guest-evidence.sh TESTDATA_DIR}"
port=/dev/virtio-ports/org.boxcar.evidence

# key=value on the evidence port (and the console, for whoever reads the
# console log); a value always stays on one line.
say() {
    value=$(printf '%s' "$2" | tr '\n' ' ' | sed 's/ *$//')
    printf '%s=%s\n' "$1" "$value" >&3
    printf 'boxcar-evidence: %s=%s\n' "$1" "$value" >/dev/console
}

exec 3>"$port" || exit 1

# An update test brings the node agent's settings (testdata/agent/): the
# first boot runs the agent's checks against the test's extra stores
# (check-*.toml, each must install nothing), then starts the agent on the
# real store (update.toml), which downloads, verifies, installs and reboots
# on its own; later boots record the usual evidence and the agent's state.
agent_dir="$testdata/agent"
agent_marker=/var/lib/boxcar-test/agent-started

# "number:label" of each partition behind a device-mapper device, or of
# every partition of a disk. `lsblk -d`: the partition alone; without it
# lsblk also lists the device-mapper device a /usr partition holds, whose
# empty label it printed first.
dm_partitions() {
    for slave in /sys/class/block/"$1"/slaves/*; do
        name=${slave##*/}
        printf '%s:%s ' "$(cat "/sys/class/block/$name/partition")" "$(lsblk -dno PARTLABEL "/dev/$name")"
    done
}
disk_partitions() {
    for part in /sys/class/block/"$1"/"$1"*; do
        name=${part##*/}
        printf '%s:%s ' "$(cat "$part/partition")" "$(lsblk -dno PARTLABEL "/dev/$name")"
    done
}
usr_dm() { basename "$(readlink -f "$(findmnt -no SOURCE /usr)")"; }
esp_ukis() { ls "$(bootctl --print-boot-path)/EFI/Linux" 2>&1; }

if [ -d "$agent_dir" ]; then
    . /usr/lib/os-release
    # A version that must fail its health check: leave its boot alone (the
    # health check reboots it, and boot counting falls back).
    if [ "$(cat "$agent_dir/fails-on" 2>/dev/null)" = "$IMAGE_VERSION" ]; then
        echo "boxcar-evidence: a trial boot of $IMAGE_VERSION, expected to fail its health check" >/dev/console
        exit 0
    fi
fi
if [ -d "$agent_dir" ] && [ ! -e "$agent_marker" ]; then
    say update.before_version "$IMAGE_VERSION"
    say update.before_usr "$(dm_partitions "$(usr_dm)")"
    mkdir -p "${agent_marker%/*}" /etc/boxcar/health.d
    touch "$agent_marker"
    systemctl stop boxcar-update.service
    for config in "$agent_dir"/check-*.toml; do
        [ -e "$config" ] || continue
        name=${config##*/check-}
        name=${name%.toml}
        cp "$config" /etc/boxcar/update.toml
        boxcar-update check >/run/boxcar-check.out 2>&1
        say "agent.check.$name" "exit $?: $(tr '\n' ' ' </run/boxcar-check.out)"
        say "agent.status.$name" "$(boxcar-update status --json 2>&1 | tr -d '\n')"
        say "agent.staged.$name" "$(find /var/lib/boxcar/updates /var/lib/boxcar-update/downloads -mindepth 1 2>/dev/null | tr '\n' ' ')"
    done
    say agent.ukis_before "$(esp_ukis)"
    if [ -e "$agent_dir/fails-on" ]; then
        printf '#!/bin/sh\n. /usr/lib/os-release\n[ "$IMAGE_VERSION" != "%s" ] || { echo "this test fails $IMAGE_VERSION on purpose"; exit 1; }\n' \
            "$(cat "$agent_dir/fails-on")" >/etc/boxcar/health.d/50-boxcar-test
        chmod 0755 /etc/boxcar/health.d/50-boxcar-test
    fi
    cp "$agent_dir/update.toml" /etc/boxcar/update.toml
    rm -f /var/lib/boxcar-update/state.json
    # The agent's journal lines on the console too, for the test's log.
    mkdir -p /run/systemd/system/boxcar-update.service.d
    printf '[Service]\nStandardError=journal+console\n' \
        >/run/systemd/system/boxcar-update.service.d/50-boxcar-test.conf
    systemctl daemon-reload
    systemctl start boxcar-update.service
    say agent.started 1
    echo "boxcar-evidence: the update agent runs; it reboots the machine when it has installed the update" >/dev/console
    exit 0
fi

say begin 1

# Wait until systemd considers the boot finished; until then
# systemd-analyze refuses to report boot times.
say system_state "$(systemctl is-system-running --wait 2>&1)"
say multi_user "$(systemctl is-active multi-user.target 2>&1)"
failed_units=$(systemctl list-units --state=failed --plain --no-legend 2>&1 | awk '{print $1}')
say failed_units "$failed_units"
# The last words of each failed unit, for whoever reads the evidence.
for unit in $failed_units; do
    say "journal.$unit" "$(journalctl --unit "$unit" --lines 8 --no-pager --output cat 2>&1 | tr '\n' '|')"
done

# Units something wants or requires but that the image does not have (a
# unit file the build removed while a link to it stayed): each is loaded
# at every boot for nothing, and a required one fails its dependants.
# "unit<-dependant" pairs; units named only for ordering (After=) are fine.
missing_units=""
for unit in $(systemctl list-units --all --state=not-found --plain --no-legend 2>&1 | awk '{print $1}'); do
    for dependant in $(systemctl show --value -p WantedBy -p RequiredBy -p RequisiteOf -p BoundBy -p UpheldBy "$unit"); do
        missing_units="$missing_units $unit<-$dependant"
    done
done
say missing_units "$missing_units"

. /usr/lib/os-release
say os_id "$ID"
say os_image_version "$IMAGE_VERSION"
say kernel_release "$(uname -r)"
say kernel_cmdline "$(cat /proc/cmdline)"

# /usr: where it comes from and what protects it.
usr_source=$(findmnt -no SOURCE /usr)
say usr_source "$usr_source"
say usr_fstype "$(findmnt -no FSTYPE /usr)"
say usr_options "$(findmnt -no OPTIONS /usr)"
dm_name=$(basename "$usr_source")
say usr_dm_table "$(dmsetup table "$dm_name" 2>&1)"
say usr_dm_status "$(dmsetup status "$dm_name" 2>&1)"
if touch /usr/.boxcar-write-test 2>/run/boxcar-write-error; then
    say usr_write allowed
    rm -f /usr/.boxcar-write-test
else
    say usr_write "refused: $(cat /run/boxcar-write-error)"
fi
if mount -o remount,rw /usr 2>/run/boxcar-remount-error; then
    say usr_remount_rw allowed
else
    say usr_remount_rw "refused: $(cat /run/boxcar-remount-error)"
fi

# The platform: the id on the command line, what systemd detects, and the
# state of every platform's agent units (the harness lists them, one
# "platform unit" pair per line).
say platform "$(sed -n 's/.*boxcar\.platform=\([a-z0-9]*\).*/\1/p' /proc/cmdline)"
say virtualization "$(systemd-detect-virt 2>&1)"
say hostname "$(hostname)"
say metadata_hostname "$(cat /run/boxcar/metadata-hostname 2>/dev/null)"
if [ -f "$testdata/platform-units" ]; then
    while read -r owner unit; do
        [ -n "$unit" ] || continue
        say "unit.$unit" "$(systemctl is-active "$unit" 2>&1)"
        say "unitinfo.$unit" "$(systemctl show --property=ConditionResult \
            --property=ExecMainStartTimestampMonotonic --property=ExecMainStatus "$unit" 2>&1)"
    done <"$testdata/platform-units"
fi

# The update agent: active (or skipped on a diskless boot), and what it
# says of itself. An update test waits until it has settled this boot
# (and, after a fallback, until a check has seen the bad version again).
if [ -d "$agent_dir" ]; then
    settled_when=$(cat "$agent_dir/settled-when")
    for _ in $(seq 120); do
        status=$(boxcar-update status --json 2>/dev/null | tr -d '\n')
        case "$status" in
        *'"pending": null'*) case "$status" in *"$settled_when"*) break ;; esac ;;
        esac
        sleep 2
    done
fi
say agent_service "$(systemctl show --property=ActiveState --property=Result --property=ConditionResult boxcar-update.service | sort | tr '\n' ' ')"
say health_service "$(systemctl show --property=ActiveState --property=Result boxcar-update-health.service | sort | tr '\n' ' ')"
# Only the agent installs updates: systemd-sysupdate's own timers stay off.
# The boot loader's upkeep runs from its own timer, minutes after the boot:
# started here, it must succeed (or be skipped where no systemd-boot booted
# the machine, as on a network boot).
say sysupdate_timers "$(systemctl is-enabled systemd-sysupdate.timer systemd-sysupdate-reboot.timer 2>&1 | tr '\n' ' ')"
say boot_loader_timer "$(systemctl is-enabled boxcar-boot-loader.timer 2>&1)"
systemctl start boxcar-boot-loader.service >/dev/null 2>&1
say boot_loader_service "$(systemctl show --property=ConditionResult --property=Result boxcar-boot-loader.service | sort | tr '\n' ' ')"
say agent_status "$(boxcar-update status --json 2>&1 | tr -d '\n')"

# Secure Boot as the firmware reports it (the SecureBoot variable's one data
# byte, after its four attribute bytes), and the kernel's lockdown mode,
# which Secure Boot switches on.
secure_boot_var=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
case "$(od -An -tu1 -j4 -N1 "$secure_boot_var" 2>/dev/null | tr -d ' ')" in
    1) say secure_boot enabled ;;
    0) say secure_boot disabled ;;
    *) say secure_boot "unknown (no SecureBoot variable)" ;;
esac
say lockdown "$(cat /sys/kernel/security/lockdown 2>&1)"
# What the initrd did with /usr's root hash signature (its usr-verity-setup
# writes the outcome under /run, which outlives the switch to this root).
say usr_signature "$(cat /run/boxcar/usr-signature 2>&1)"

# Agents bound to a hypervisor qemu cannot be (see the platform table's
# hypervisor-bound-agents) come with a check that says whether this is that
# hypervisor; each check the image has runs (the harness lists them, one
# "key program" pair per line).
if [ -f "$testdata/hypervisor-checks" ]; then
    while read -r key program; do
        [ -n "$program" ] || continue
        if command -v "$program" >/dev/null; then
            say "$key" "$("$program" 2>&1 </dev/null)"
        fi
    done <"$testdata/hypervisor-checks"
fi

# EC2's EBS names: on an NVMe boot disk, nvme-cli reads the controller's
# identify data and the helper behind /dev/sdX links looks for a name in
# it (qemu's disk is no EBS volume, so it finds none); and udev accepts
# every rules file the image adds.
if [ -b /dev/nvme0n1 ]; then
    say nvme_identify_bytes "$(nvme id-ctrl --raw-binary /dev/nvme0n1 2>/run/nvme-id-ctrl.err | wc -c) $(cat /run/nvme-id-ctrl.err)"
    say ebs_device_name "$(/usr/lib/udev/boxcar-ebs-device-name /dev/nvme0n1 2>&1; echo "exit=$?")"
fi
say udev_rules_verify "$(udevadm verify /usr/lib/udev/rules.d/*boxcar*.rules 2>&1; echo "exit=$?")"

# ROOT: mounted writable, grown to the disk.
root_source=$(findmnt -no SOURCE /)
say root_source "$root_source"
say root_fstype "$(findmnt -no FSTYPE /)"
say root_partition_bytes "$(lsblk -bdno SIZE "$root_source" 2>&1)"
say root_filesystem_bytes "$(df -B1 --output=size / | tail -n 1 | tr -d ' ')"

# docker when the boot has finished: it starts on the first use of its
# socket, or at boot once it has containers or a swarm to bring back
# (boxcar-docker-at-boot.service), or when a unit needs it. The first
# request then starts it, and docker_first_answer_ms is how long that
# took: what a node's first `docker` command waits. The footprint below is
# with docker up, as on a node that runs containers.
say docker_at_boot_end "$(systemctl is-active docker.service 2>&1)"
say docker_at_boot_condition "$(systemctl show --property=ConditionResult --value boxcar-docker-at-boot.service 2>&1)"
say docker_socket "$(systemctl is-active docker.socket 2>&1)"
first_request=$(date +%s%N)
say docker_first_answer "$(docker version --format '{{.Server.Version}}' 2>&1)"
say docker_first_answer_ms "$((($(date +%s%N) - first_request) / 1000000))"

# The running system's footprint once the boot has finished, before the
# container test adds to it: memory in use (MemTotal - MemAvailable),
# processes (kernel threads and this test's own aside), and where the
# boot's time went (the ten slowest units, devices aside: a device's time
# is only when it appeared; the chain to multi-user.target).
meminfo=$(cat /proc/meminfo)
say footprint.memory_used_kib "$(echo "$meminfo" | awk '/^MemTotal:/ { total = $2 }
    /^MemAvailable:/ { available = $2 } END { print total - available }')"
# Where that memory goes: process memory, tmpfs files, the kernel's own
# (unreclaimable slab, stacks, page tables, per-CPU), and the page cache:
# MemAvailable counts the file pages on the LRU lists (Active and
# Inactive(file)) less what the kernel keeps free for itself, the zones'
# high watermarks (footprint.watermark_high_kib).
say footprint.memory_kib "$(echo "$meminfo" | awk '/^(MemTotal|MemFree|MemAvailable|Buffers|Cached|Active\(file\)|Inactive\(file\)|AnonPages|Shmem|KReclaimable|SUnreclaim|KernelStack|PageTables|Percpu|VmallocUsed|Unevictable):/ {
    sub(":", "", $1); printf "%s%s=%s", separator, $1, $2; separator = ";" }')"
# A running container has its shim: a provisioned boot runs its config's.
say footprint.containers_running "$(ps -e -o comm= | grep -c '^containerd-shim')"
say footprint.watermark_high_kib "$(awk -v page_kib="$(($(getconf PAGESIZE) / 1024))" \
    '$1 == "high" { pages += $2 } END { print pages * page_kib }' /proc/zoneinfo)"
# How much of each higher zone's allocations the DMA zone refuses, in
# pages: "(0, 0, ...)" once usr/lib/sysctl.d/50-boxcar.conf lent it.
say dma_zone_protection "$(awk '$1 == "Node" { zone = $4 }
    zone == "DMA" && $1 == "protection:" { sub(/^ *protection: */, ""); print; exit }' /proc/zoneinfo)"
say footprint.biggest_processes "$(ps -e -o rss=,comm= --sort=-rss | head -n 8 |
    awk '{ print $2 "=" $1 }' | paste -sd ';')"
say footprint.processes "$(ps -e -ww -o pid=,ppid=,cgroup= |
    awk -v own="$(cat /proc/self/cgroup)" '$1 != 2 && $2 != 2 && $3 != own' | wc -l)"
say footprint.kernel_threads "$(ps -e -o pid=,ppid= | awk '$1 == 2 || $2 == 2' | wc -l)"
# The kernel modules this platform's boot loaded: none, since the kernel
# is built without loadable modules (recipes/kernel/config); a kernel with
# them lists here what its drivers would have to be built in.
say footprint.modules "$(if [ -e /proc/modules ]; then cut -d ' ' -f 1 /proc/modules | sort | paste -sd ' '; fi)"
# The drivers bound to this platform's devices, built in or loaded,
# separated by ";" (some names have spaces: "i8042 kbd").
say footprint.drivers "$(for link in /sys/bus/*/devices/*/driver; do
    [ -L "$link" ] && basename "$(readlink "$link")"; done | sort -u | paste -sd ';')"
# dockerd's ELF type (e_type, two bytes at offset 16, as hex): 0002 for a
# position-dependent executable, 0003 for a position-independent one,
# whose read-only data the loader makes private memory by relocating it.
say footprint.dockerd_elf_type "$(od -An -tx2 -j16 -N2 /usr/sbin/dockerd 2>&1 | tr -d ' ')"
say footprint.slowest_units "$(systemd-analyze blame --no-pager 2>&1 | grep -v '\.device$' | head -n 10 | sed 's/^ *//' | paste -sd ';')"
# Where the boot's processor time went, unit by unit: under emulation the
# guest's two processors are the bottleneck, so work off the critical chain
# slows the chain too.
# (systemctl show prints one block per unit, separated by blank lines.)
say footprint.busiest_units "$(systemctl show --no-pager --property=Id --property=CPUUsageNSec '*.service' 2>/dev/null |
    awk -F= 'function flush() { if (cpu ~ /^[0-9]+$/) print cpu, id; id = ""; cpu = "" }
        /^Id=/ { id = $2 } /^CPUUsageNSec=/ { cpu = $2 } /^$/ { flush() } END { flush() }' |
    sort -rn | head -n 10 |
    awk '{ printf "%.2fs %s\n", $1 / 1e9, $2 }' | paste -sd ';')"
say footprint.critical_chain "$(systemd-analyze critical-chain --no-pager multi-user.target 2>&1 |
    grep -E '@[0-9]' | sed 's/^[^a-zA-Z0-9]*//' | paste -sd ';')"

# The container runtime.
say containerd "$(systemctl is-active containerd.service 2>&1)"
# containerd starts even when a plugin fails to load (because a plugin it
# needs was disabled, say), so its log is read too: the plugins it
# could not load, by id.
say containerd_plugin_failures "$(journalctl -b -q -u containerd.service -o cat 2>/dev/null |
    sed -n 's/.*msg="failed to load plugin \([^ "]*\).*/\1/p' | sort -u | paste -sd ' ')"
say docker "$(systemctl is-active docker.service 2>&1)"
if docker import "$testdata/rootfs.tar" boxcar-test/busybox:latest >/run/boxcar-import.log 2>&1; then
    say container_output "$(docker run --rm --network none boxcar-test/busybox:latest /bin/busybox echo boxcar-container-ok 2>&1)"
else
    say container_output "import failed: $(cat /run/boxcar-import.log)"
fi

# Boot timing: what systemd-analyze prints, and the raw timestamps
# (microseconds) for the harness to break down.
say analyze "$(systemd-analyze time 2>&1 | head -n 1)"
say timestamps "$(systemctl show --property=FirmwareTimestampMonotonic --property=LoaderTimestampMonotonic \
    --property=InitRDTimestampMonotonic --property=UserspaceTimestampMonotonic \
    --property=FinishTimestampMonotonic | tr '\n' ' ')"
say multi_user_reached_us "$(systemctl show --property=ActiveEnterTimestampMonotonic --value multi-user.target)"

if [ -d "$agent_dir" ]; then
    say update.loader_entry "$(cat /sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f 2>&1 | tail -c +5 | tr -d '\000')"
    say update.usr "$(dm_partitions "$(usr_dm)")"
    say update.partitions "$(disk_partitions "$(lsblk -no PKNAME "$root_source")")"
    say update.bless "$(systemctl show --property=ActiveState --property=Result systemd-bless-boot.service | tr '\n' ' ')"
    say update.ukis "$(esp_ukis)"
    # Whether this first boot of the new /usr brought /etc and /var up to
    # date for it (the agent removed the stamps that would say they are).
    say update.refreshed "$(for unit in ldconfig.service systemd-sysusers.service systemd-update-done.service; do
        printf '%s=%s ' "$unit" "$(systemctl show --property=ConditionResult --value "$unit")"
    done)"
fi

# Provisioning: what the first boot's Ignition left, whether this boot ran
# it, whether anything listens for SSH (on port 22, or on a socket systemd
# would start sshd from), and which accounts could log in
# with a password (none may).
boot_count=/var/lib/boxcar-test/boots
mkdir -p "${boot_count%/*}"
boots=$(( $(cat "$boot_count" 2>/dev/null || echo 0) + 1 ))
echo "$boots" >"$boot_count"
say boot_number "$boots"
say provisioned "$(tr '\n' ' ' </var/lib/boxcar/provisioned 2>&1)"
say ignition_messages "$(journalctl -b -q -t ignition 2>/dev/null | wc -l)"
say ssh_listeners "$(ss -ltnH 'sport = :22' 2>&1 | wc -l)"
say ssh_connect "$(timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/22 && echo connected' 2>&1 | tr '\n' ' ')"
say ssh_sockets "$(systemctl list-units --state=active --plain --no-legend 'ssh*.socket' 2>&1 | awk '{ print $1 }' | tr '\n' ' ')"
say password_accounts "$(awk -F: '$2 !~ /^[!*]/ { print $1 }' /etc/shadow | tr '\n' ' ')"

say end 1
exec 3>&-
# A provisioning test logs in over SSH now, then reboots or powers the
# machine off itself. Should the host never get in, the machine powers
# itself off after a while rather than wait for the boot's timeout.
if [ -e "$testdata/login-wait" ]; then
    systemd-run --quiet --on-active=360 --unit=boxcar-evidence-give-up systemctl poweroff
    echo "boxcar-evidence: login.ready=$boots" >/dev/console
    exit 0
fi
systemctl poweroff --no-block
