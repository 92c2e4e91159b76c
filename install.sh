#!/usr/bin/env bash
# Install the packet IPAM driver, the alias_ip hook and the alias_sdnat VNM driver into an
# OpenNebula 5.10/5.12 frontend. Run ./install.sh --help for the details.
set -euo pipefail
umask 022  # the hook runs as oneadmin: what we install must be readable (config: 0600 below)

usage() {
    cat <<'EOF'
Usage: ./install.sh [OPTIONS]

Installs the packet IPAM driver, the alias_ip hook and the alias_sdnat VNM driver into an
OpenNebula 5.10/5.12 frontend, then prints the oned.conf changes and the onehook commands.
Run it again to upgrade or repair: it replaces what it installed and keeps the config.

Layout (where the files go):
  system (default)          remotes /var/lib/one/remotes, config /etc/one,
                            logs /var/log/one, leases /var/lib/one/ipam_state,
                            hook templates /usr/share/one/packet_provider/hooks,
                            virtualenv and manifest /var/lib/one/packet_provider,
                            operator command /var/lib/one/packet_provider/bin/packet-provider
                            (and a symlink /usr/local/bin/packet-provider when writable)
  ONE_LOCATION=DIR          self-contained: DIR/var/remotes, DIR/etc, logs in DIR/var,
                            leases DIR/var/ipam_state, DIR/share/packet_provider,
                            DIR/var/packet_provider (command: DIR/var/packet_provider/bin)
  --one-location DIR        the same as ONE_LOCATION=DIR
  --destdir DIR             stage everything under DIR (for packagers): files go to
                            DIR/<path>, but executables, shebangs and the manifest name the
                            final <path>; nothing is chowned

Python of the frontend executables (IPAM driver and hook need pyone 5.12, lxml, requests
and pyyaml; the VNM driver runs on the hosts with /usr/bin/env python3 and needs nothing):
  (default)                 a virtualenv in <var>/packet_provider/venv, created with
                            python3 -m venv; pip runs only when a package is missing
                            (offline: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels)
  --venv DIR                use (or create) the virtualenv DIR
  --python PY               use interpreter PY as it is (it must import the packages)
  --no-venv                 use the system python3 (apt-get install python3-lxml
                            python3-requests python3-yaml; pip install 'pyone>=5.12,<5.13')

Other actions:
  --hooks                   after installing, create the three alias_ip hooks through oned
                            (ONE_XMLRPC or the config's one_xmlrpc; session from ONE_AUTH,
                            the config's one_auth, ~/.one/one_auth, or the owner's (oneadmin)
                            ~/.one/one_auth). Idempotent: a hook
                            with the same NAME is kept, or updated if it differs.
  --oned-conf FILE          oned.conf to read the current IPAM_MAD arguments from
                            (default <config dir>/oned.conf)
  --owner USER              owner of the config, leases and installed files
                            (default oneadmin, when that user exists and we are root)
  --uninstall               remove exactly what the last install put in place (from its
                            manifest) and restore the files it had replaced; the config,
                            leases and logs stay
  --node                    on a hypervisor, as root, instead of all the above: write
                            /etc/sudoers.d/opennebula-alias_sdnat, which lets oneadmin (or
                            --owner) run iptables-save and iptables-restore (and their
                            -legacy/-nft variants) through sudo, so that each alias_sdnat
                            action is one iptables-restore transaction. Checked with
                            visudo -cf, mode 0440; idempotent; with --uninstall, removes it.
                            Without it the driver works with OpenNebula's stock ONE_NET
                            sudoers rule (one iptables command per change)
  --lab                     also install the lab (the Packet API and oned emulators, for a
                            trial without a cloud) into <var>/packet_provider/lab, outside
                            the remotes tree; the product never imports it
  -q, --quiet               print only the oned.conf changes and the onehook commands
  -h, --help                this text

Examples:
  sudo ./install.sh
  sudo ./install.sh --hooks
  ONE_LOCATION=/opt/one ./install.sh --python /opt/one/venv/bin/python
  ./install.sh --destdir "$PWD/pkgroot" --no-venv
  sudo ./install.sh --uninstall
  sudo ./install.sh --node            # on each hypervisor
EOF
}

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
say() { [ "$quiet" = 1 ] || printf '%s\n' "$*"; }

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
DEPS=("pyone>=5.12,<5.13" "lxml>=4.6" "requests>=2.22" "pyyaml>=5.1")
DEPS_IMPORT='import pyone, lxml.etree, requests, yaml'

destdir=""
python_mode=venv
venv_dir=""
python_given=""
do_hooks=0
do_uninstall=0
do_node=0
do_lab=0
oned_conf=""
owner=""
quiet=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; destdir=$2; shift ;;
        --destdir=*) destdir=${1#*=} ;;
        --one-location) [ $# -ge 2 ] || die "--one-location needs a directory"
            export ONE_LOCATION=$2; shift ;;
        --one-location=*) export ONE_LOCATION=${1#*=} ;;
        --venv) [ $# -ge 2 ] || die "--venv needs a directory"; python_mode=venv; venv_dir=$2; shift ;;
        --venv=*) python_mode=venv; venv_dir=${1#*=} ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python_mode=given; python_given=$2; shift ;;
        --python=*) python_mode=given; python_given=${1#*=} ;;
        --no-venv) python_mode=system ;;
        --hooks) do_hooks=1 ;;
        --uninstall) do_uninstall=1 ;;
        --node) do_node=1 ;;
        --lab) do_lab=1 ;;
        --oned-conf) [ $# -ge 2 ] || die "--oned-conf needs a file"; oned_conf=$2; shift ;;
        --oned-conf=*) oned_conf=${1#*=} ;;
        --owner) [ $# -ge 2 ] || die "--owner needs a user"; owner=$2; shift ;;
        --owner=*) owner=${1#*=} ;;
        -q|--quiet) quiet=1 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

absolute() {  # absolute path of $1 (need not exist), without resolving symlinks
    case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac
}

# ---- --node: the hypervisor's sudoers drop-in for the alias_sdnat VNM driver -------------
# The VMM driver runs VNM actions as oneadmin; OpenNebula's node sudoers (ONE_NET) allows
# iptables but not iptables-save/-restore. This drop-in adds those two, so that the driver
# applies each action as one transaction. Nothing else is installed on a node: onehost sync
# brings the driver.
if [ "$do_node" = 1 ]; then
    node_user=${owner:-oneadmin}
    [[ "$node_user" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "--owner: '$node_user' is not a user name sudoers accepts here"
    node_dir=${destdir:+$(absolute "${destdir%/}")}/etc/sudoers.d
    node_file=$node_dir/opennebula-alias_sdnat
    if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
        die "--node writes /etc/sudoers.d: run it as root (or stage it with --destdir)"
    fi
    if [ "$do_uninstall" = 1 ]; then
        rm -f "$node_file"
        say "Removed $node_file (alias_sdnat falls back to the stock ONE_NET sudoers rule)."
        exit 0
    fi
    PATH=$PATH:/usr/sbin:/sbin command -v visudo >/dev/null 2>&1 \
        || die "visudo not found: install sudo (apt-get install sudo)"
    node_cmds=()
    for name in iptables-save iptables-restore iptables-legacy-save iptables-legacy-restore \
                iptables-nft-save iptables-nft-restore; do
        path=$(PATH=$PATH:/usr/sbin:/sbin command -v "$name" 2>/dev/null) || continue
        case "$path" in /*) node_cmds+=("$path") ;; esac
    done
    [ "${#node_cmds[@]}" -ge 2 ] && [[ " ${node_cmds[*]} " == *"/iptables-restore "* ]] \
        || die "iptables-save and iptables-restore not found: install iptables (apt-get install iptables)"
    node_text="# alias_sdnat VNM driver (OpenNebula NIC alias IPs on Packet), written by install.sh --node:
# lets $node_user apply each action's nat rules as one iptables-save + iptables-restore
# transaction. Without this file the driver uses the ONE_NET rule (iptables only).
Defaults:$node_user !requiretty
Cmnd_Alias ALIAS_SDNAT_NAT = $(IFS=,; printf '%s' "${node_cmds[*]}" | sed 's/,/, /g')
$node_user ALL=(root) NOPASSWD: ALIAS_SDNAT_NAT"
    if [ -f "$node_file" ] && [ ! -L "$node_file" ] && [ "$(cat "$node_file")" = "$node_text" ] \
        && [ "$(stat -c '%a %u' "$node_file")" = "440 0" ]; then
        say "$node_file is already in place."
        exit 0
    fi
    mkdir -p "$node_dir"
    node_tmp=$node_dir/.opennebula-alias_sdnat.tmp-install.$$  # a dot: sudo skips it meanwhile
    trap 'rm -f "$node_tmp"' EXIT
    (umask 077 && printf '%s\n' "$node_text" > "$node_tmp")
    chmod 0440 "$node_tmp"
    if [ "$(id -u)" = 0 ]; then chown 0:0 "$node_tmp"; fi
    node_check=$(PATH=$PATH:/usr/sbin:/sbin visudo -cf "$node_tmp" 2>&1) \
        || die "visudo refused the drop-in, nothing written: $node_check"
    mv -fT "$node_tmp" "$node_file"
    say "Wrote $node_file (mode 0440): $node_user may run ${node_cmds[*]##*/} through sudo."
    if [ -z "$destdir" ] && ! grep -Eqs '^[@#]includedir[[:space:]]+/etc/sudoers\.d' /etc/sudoers; then
        echo "install.sh: warning: /etc/sudoers has no @includedir /etc/sudoers.d: the drop-in is not read" >&2
    fi
    exit 0
fi

# ---- layout ---------------------------------------------------------------------------
ONE_LOCATION=${ONE_LOCATION:-}
if [ -n "$ONE_LOCATION" ]; then
    ONE_LOCATION=$(absolute "${ONE_LOCATION%/}")
    export ONE_LOCATION
    REMOTES=$ONE_LOCATION/var/remotes
    ETC=$ONE_LOCATION/etc
    LOG_DIR=$ONE_LOCATION/var
    STATE_DIR=$ONE_LOCATION/var/ipam_state
    SHARE=$ONE_LOCATION/share/packet_provider
    VAR=$ONE_LOCATION/var/packet_provider
else
    REMOTES=/var/lib/one/remotes
    ETC=/etc/one
    LOG_DIR=/var/log/one
    STATE_DIR=/var/lib/one/ipam_state
    SHARE=/usr/share/one/packet_provider
    VAR=/var/lib/one/packet_provider
fi
if [ -n "$destdir" ]; then
    destdir=$(absolute "${destdir%/}")
    [ "$do_hooks" = 0 ] || die "--hooks talks to a running oned: not with --destdir"
fi
D=$destdir
CONFIG=$ETC/packet_provider.yaml
MANIFEST=$VAR/install-manifest
BACKUP=$VAR/backup
HOOK_NAMES=(running_hook hotplug_hook done_hook)

if [ -z "$owner" ] && [ -z "$D" ] && [ "$(id -u)" = 0 ] && id oneadmin >/dev/null 2>&1; then
    owner=oneadmin
fi
if [ -n "$owner" ]; then
    id "$owner" >/dev/null 2>&1 || die "--owner: no user '$owner'"
    group=$(id -gn "$owner")
fi

chown_owner() {  # chown_owner PATH...: give the installed paths to the owner, if any
    [ -z "$owner" ] && return 0
    chown -h "$owner:$group" "$@"
}

# ---- manifest --------------------------------------------------------------------------
# One entry a line, "<type> <final path>": f file, l symlink, d directory we created,
# v virtualenv we created, b a file we replaced (kept under <var>/backup/<path>).
declare -A OLD=()
if [ -f "$D$MANIFEST" ]; then
    while IFS=' ' read -r kind path; do
        [ -n "$kind" ] && OLD["$kind $path"]=1
    done < "$D$MANIFEST"
fi
NEW_LIST=()
declare -A NEW=()
record() {  # record TYPE PATH
    if [ -z "${NEW["$1 $2"]:-}" ]; then
        NEW["$1 $2"]=1
        NEW_LIST+=("$1 $2")
    fi
}

restore_backup() {  # put back the file we had replaced at PATH, if any
    local path=$1
    if [ -e "$D$BACKUP$path" ] || [ -L "$D$BACKUP$path" ]; then
        mv -f "$D$BACKUP$path" "$D$path"
    fi
}

remove_venv() {  # remove a virtualenv we created (only if it still looks like one)
    local path=$1
    case "$path" in /?*) ;; *) return 0 ;; esac
    if [ -f "$D$path/pyvenv.cfg" ] && [ -d "$D$path/bin" ]; then rm -rf -- "$D$path"; fi
    return 0
}

remove_entry() {  # remove_entry TYPE PATH: undo one manifest entry
    local kind=$1 path=$2
    case "$kind" in
        f|l) rm -f "$D$path"; [ -z "${OLD["b $path"]:-}" ] || restore_backup "$path" ;;
        v) remove_venv "$path" ;;
        d) rmdir "$D$path" 2>/dev/null || true ;;
    esac
    return 0
}

remove_dirs() {  # remove the recorded directories (deepest first) that are empty
    local path
    while IFS= read -r path; do
        [ -n "$path" ] || continue
        [ ! -d "$D$path/__pycache__" ] || rm -rf "$D$path/__pycache__"
        rmdir "$D$path" 2>/dev/null || true
    done < <(printf '%s\n' "$@" | awk 'NF { print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-)
}

# ---- uninstall -------------------------------------------------------------------------
if [ "$do_uninstall" = 1 ]; then
    [ -f "$D$MANIFEST" ] || die "nothing to uninstall: no manifest at $D$MANIFEST"
    dirs=()
    while IFS=' ' read -r kind path; do
        case "$kind" in
            f|l|v) remove_entry "$kind" "$path" ;;
            d) dirs+=("$path") ;;
        esac
    done < "$D$MANIFEST"
    rm -f "$D$MANIFEST"
    [ ! -d "$D$BACKUP" ] || find "$D$BACKUP" -depth -type d -empty -delete
    remove_dirs "${dirs[@]}"
    say "Uninstalled what $MANIFEST listed. Kept: $CONFIG, $STATE_DIR (leases), logs in $LOG_DIR."
    say "Remove the alias_ip hooks (onehook delete), 'packet' from IPAM_MAD and the alias_sdnat"
    say "VN_MAD_CONF from oned.conf yourself if you no longer use them."
    exit 0
fi

# ---- sources ---------------------------------------------------------------------------
for part in remotes/ipam/packet remotes/hooks/alias_ip remotes/vnm/alias_sdnat lib/packet_provider share/bin; do
    [ -d "$SRC/$part" ] || die "missing $SRC/$part: run install.sh from a complete checkout"
done
[ -f "$SRC/share/examples/packet_provider.yaml" ] || die "missing share/examples/packet_provider.yaml"
for name in "${HOOK_NAMES[@]}"; do
    [ -f "$SRC/share/examples/alias_ip/$name" ] || die "missing share/examples/alias_ip/$name"
done
command -v python3 >/dev/null 2>&1 || die "python3 is needed"

# ---- copying ---------------------------------------------------------------------------
# The directories of the layout itself (and their parents) are never ours to remove.
declare -A BASE=()
for base in "$ETC" "$LOG_DIR" "$(dirname "$VAR")"; do
    while [ -n "$base" ] && [ "$base" != / ]; do BASE["$base"]=1; base=$(dirname "$base"); done
done

ensure_dir() {  # ensure_dir PATH: create a directory (and parents), recording what we made
    local path=$1
    [ "$path" != / ] || return 0
    ensure_dir "$(dirname "$path")"
    if [ ! -d "$D$path" ]; then
        mkdir "$D$path"
        chown_owner "$D$path"
        [ -n "${BASE["$path"]:-}" ] || record d "$path"
    elif [ -n "${OLD["d $path"]:-}" ]; then
        record d "$path"
    fi
}

backup_if_foreign() {  # keep a file we did not install before replacing it
    local path=$1
    if { [ -e "$D$path" ] || [ -L "$D$path" ]; } && [ -z "${OLD["f $path"]:-}${OLD["l $path"]:-}" ]; then
        if [ -z "${OLD["b $path"]:-}" ]; then
            [ ! -d "$D$path" ] || [ -L "$D$path" ] || die "$D$path is a directory; expected a file"
            mkdir -p "$(dirname "$D$BACKUP$path")"
            mv -f "$D$path" "$D$BACKUP$path"
            say "  kept the previous $path in $BACKUP$path"
        fi
    fi
    if [ -n "${OLD["b $path"]:-}" ] || [ -e "$D$BACKUP$path" ] || [ -L "$D$BACKUP$path" ]; then
        record b "$path"
    fi
}

install_link() {  # install_link TARGET PATH: a symlink, replaced atomically
    local target=$1 path=$2 tmp
    backup_if_foreign "$path"
    tmp=$D$path.tmp-install.$$
    ln -sfn "$target" "$tmp"
    chown_owner "$tmp"
    mv -fT "$tmp" "$D$path"
    record l "$path"
}

install_file() {  # install_file SRC PATH MODE [SHEBANG]: a file, replaced atomically
    local src=$1 path=$2 mode=$3 shebang=${4:-} tmp
    backup_if_foreign "$path"
    tmp=$D$path.tmp-install.$$
    if [ -n "$shebang" ]; then
        { printf '#!%s\n' "$shebang"; tail -n +2 "$src"; } > "$tmp"
    else
        cp "$src" "$tmp"
    fi
    chmod "$mode" "$tmp"
    chown_owner "$tmp"
    mv -fT "$tmp" "$D$path"
    record f "$path"
}

# install_tree SRC DEST SHEBANG: copy a source directory; files whose first line is a
# python shebang get SHEBANG instead when it is not empty; relative symlinks are kept.
install_tree() {
    local src=$1 dest=$2 shebang=$3 entry rel target first
    ensure_dir "$dest"
    while IFS= read -r -d '' entry; do
        rel=${entry#"$src"/}
        if [ -L "$entry" ]; then
            target=$(readlink "$entry")
            case "$target" in /*|*..*) die "$entry: symlink leaves its directory ($target)" ;; esac
            install_link "$target" "$dest/$rel"
        elif [ -d "$entry" ]; then
            ensure_dir "$dest/$rel"
        elif [ -f "$entry" ]; then
            if [ -x "$entry" ]; then
                first=$(head -n 1 "$entry")
                if [ -n "$shebang" ] && [[ "$first" == '#!'*python* ]]; then
                    install_file "$entry" "$dest/$rel" 0755 "$shebang"
                else
                    install_file "$entry" "$dest/$rel" 0755
                fi
            else
                install_file "$entry" "$dest/$rel" 0644
            fi
        fi
    done < <(find "$src" -mindepth 1 \( -name __pycache__ -o -name '*.egg-info' -o -name '.*' \
                 -o -name '*.pyc' -o -name '*.tmp-install.*' \) -prune -o -print0 | sort -z)
}

# compile_tree PATH: byte-compile an installed library with the frontend python, so that no
# action compiles it again (oneadmin cannot write __pycache__ in a root-owned tree, and would
# recompile on every run). The caches check the source's hash, not its time, so they stay
# valid in the copies onehost sync makes on the hosts (hosts with another python version
# compile their own). They are not in the manifest: removing a directory removes them.
compile_tree() {
    "$RUN_PY" -m compileall -q -r 10 --invalidation-mode checked-hash -d "$1" "$D$1" >/dev/null \
        || die "$FRONT_PY could not byte-compile $1"
    [ -z "$owner" ] || find "$D$1" -name __pycache__ -type d -exec chown -hR "$owner:$group" {} +
}

# ---- the frontend python (checked before anything is written) -------------------------
created_venv=""
case "$python_mode" in
    given)
        if [[ "$python_given" != */* ]]; then
            python_given=$(command -v "$python_given") || die "--python: '$python_given' not found"
        fi
        FRONT_PY=$(absolute "$python_given")
        RUN_PY=$FRONT_PY
        [ -x "$RUN_PY" ] || die "--python: $FRONT_PY is not executable"
        "$RUN_PY" -c "$DEPS_IMPORT" 2>/dev/null \
            || die "--python: $FRONT_PY cannot import pyone, lxml, requests and yaml"
        ;;
    system)
        FRONT_PY=$(command -v python3)
        RUN_PY=$FRONT_PY
        if ! "$RUN_PY" -c "$DEPS_IMPORT" 2>/dev/null; then
            msg="$FRONT_PY cannot import pyone, lxml, requests and yaml (apt-get install python3-lxml python3-requests python3-yaml; pip install 'pyone>=5.12,<5.13')"
            if [ -n "$D" ]; then echo "install.sh: warning: $msg" >&2; else die "$msg"; fi
        fi
        ;;
    venv)
        venv_dir=$(absolute "${venv_dir:-$VAR/venv}")
        FRONT_PY=$venv_dir/bin/python
        RUN_PY=$D$FRONT_PY
        ;;
esac
case "$FRONT_PY" in *[[:space:]]*) die "the frontend python path must not contain spaces: $FRONT_PY" ;; esac
[ "${#FRONT_PY}" -lt 120 ] || die "the frontend python path is too long for a #! line: $FRONT_PY"

undo_new() {  # a failed install: remove the directories and venv this run created
    [ -z "$created_venv" ] || remove_venv "$created_venv"
    local entry dirs=()
    for entry in "${NEW_LIST[@]}"; do
        if [ -z "${OLD["$entry"]:-}" ] && [ "${entry%% *}" = d ]; then dirs+=("${entry#* }"); fi
    done
    [ "${#dirs[@]}" = 0 ] || remove_dirs "${dirs[@]}"
}

setup_venv() {  # create the virtualenv if needed and install the packages it lacks
    if [ ! -x "$RUN_PY" ]; then
        say "Creating the virtualenv $venv_dir"
        ensure_dir "$(dirname "$venv_dir")"
        created_venv=$venv_dir
        if ! python3 -m venv "$D$venv_dir"; then
            undo_new
            die "python3 -m venv failed (apt-get install python3-venv)"
        fi
    fi
    if ! "$RUN_PY" -c "$DEPS_IMPORT" 2>/dev/null; then
        say "Installing ${DEPS[*]} into $venv_dir"
        if ! "$RUN_PY" -m pip install -q "${DEPS[@]}"; then
            undo_new
            die "pip could not install ${DEPS[*]} into $venv_dir; without internet, point PIP_FIND_LINKS at a wheel directory with PIP_NO_INDEX=1, or use --python / --venv with an environment that has them"
        fi
    fi
}
writable_or_die() {  # the nearest existing parent of PATH must be writable
    local path=$1
    while [ ! -e "$path" ]; do path=$(dirname "$path"); done
    [ -w "$path" ] || die "cannot write to $path: run as root (or choose ONE_LOCATION / --destdir)"
}
if [ -n "$D" ]; then
    writable_or_die "$D"
    mkdir -p "$D"
else
    for dir in "$REMOTES" "$ETC" "$VAR" "$SHARE" "$STATE_DIR" "$LOG_DIR"; do writable_or_die "$dir"; done
fi
if [ "$python_mode" = venv ]; then
    setup_venv
    if [ -n "$created_venv" ] || [ -n "${OLD["v $venv_dir"]:-}" ]; then
        record v "$venv_dir"
    fi
fi

# If anything below fails, the manifest keeps every path of the old and the new install, so
# that --uninstall (or the next run) still knows all of them.
finished=0
keep_manifest_on_failure() {
    [ "$finished" = 0 ] && [ -d "$D$VAR" ] || return 0
    local entry
    { for entry in "${!OLD[@]}"; do printf '%s\n' "$entry"; done
      printf '%s\n' "${NEW_LIST[@]}"; } | awk '!seen[$0]++' > "$D$MANIFEST.tmp-install.$$" \
        && mv -fT "$D$MANIFEST.tmp-install.$$" "$D$MANIFEST"
}
trap keep_manifest_on_failure EXIT

if [ -z "$D" ] && [ ! -d "$REMOTES" ]; then
    echo "install.sh: warning: $REMOTES did not exist: is OpenNebula installed here? (creating it)" >&2
fi
say "Installing into ${D:+$D (staged) }${ONE_LOCATION:+ONE_LOCATION=}${ONE_LOCATION:-the system layout}"
ensure_dir "$VAR"
install_tree "$SRC/lib/packet_provider" "$REMOTES/lib/packet_provider" ""
install_tree "$SRC/remotes/ipam/packet" "$REMOTES/ipam/packet" "$FRONT_PY"
install_tree "$SRC/remotes/hooks/alias_ip" "$REMOTES/hooks/alias_ip" "$FRONT_PY"
install_tree "$SRC/remotes/vnm/alias_sdnat" "$REMOTES/vnm/alias_sdnat" ""
# Hooks created from the old documentation run COMMAND alias_ip/alias_ip.rb: make that name
# run the Python hook too (onehem runs the file directly, so the extension does not matter).
if [ ! -L "$SRC/remotes/hooks/alias_ip/alias_ip.rb" ]; then
    install_link alias_ip.py "$REMOTES/hooks/alias_ip/alias_ip.rb"
fi
ensure_dir "$SHARE/hooks"
for name in "${HOOK_NAMES[@]}"; do
    install_file "$SRC/share/examples/alias_ip/$name" "$SHARE/hooks/$name" 0644
done
install_file "$SRC/share/examples/packet_provider.yaml" "$SHARE/packet_provider.yaml.example" 0644
# The operator command (check, reconcile): beside the virtualenv, not in the remotes tree
# (onehost sync copies that to every host). The system layout also gets a symlink in
# /usr/local/bin when that directory is writable and has no other packet-provider.
ensure_dir "$VAR/bin"
install_file "$SRC/share/bin/packet-provider" "$VAR/bin/packet-provider" 0755 "$FRONT_PY"
COMMAND_LINK=""
if [ -z "$ONE_LOCATION" ] && [ -d "$D/usr/local/bin" ] && [ -w "$D/usr/local/bin" ]; then
    if { [ ! -e "$D/usr/local/bin/packet-provider" ] && [ ! -L "$D/usr/local/bin/packet-provider" ]; } \
            || [ -n "${OLD["l /usr/local/bin/packet-provider"]:-}" ]; then
        install_link "$VAR/bin/packet-provider" /usr/local/bin/packet-provider
        COMMAND_LINK=/usr/local/bin/packet-provider
    else
        echo "install.sh: warning: /usr/local/bin/packet-provider exists and is not ours: left alone" >&2
    fi
fi
# The lab only when asked for (a trial of the installed tree against the emulators).
if [ "$do_lab" = 1 ]; then
    [ -d "$SRC/lib/packet_lab" ] || die "--lab: no lib/packet_lab in $SRC"
    ensure_dir "$VAR/lab"
    install_tree "$SRC/lib/packet_lab" "$VAR/lab/packet_lab" ""
fi
compile_tree "$REMOTES/lib/packet_provider"
[ "$do_lab" = 0 ] || compile_tree "$VAR/lab/packet_lab"
# A copy of this script, so that --uninstall works without the checkout.
install_file "$SRC/install.sh" "$VAR/install.sh" 0755

# Leases and logs: created if missing, never removed.
for dir in "$STATE_DIR" "$LOG_DIR"; do
    if [ ! -d "$D$dir" ]; then
        mkdir -p "$D$dir"
        [ "$dir" != "$STATE_DIR" ] || chmod 0750 "$D$dir"
        chown_owner "$D$dir"
    fi
done

# The config: written once, never overwritten, never in the manifest.
config_note="kept as it is"
if [ ! -e "$D$CONFIG" ] && [ ! -L "$D$CONFIG" ]; then
    mkdir -p "$D$ETC"
    tmp=$D$CONFIG.tmp-install.$$
    (umask 077 && cp "$SRC/share/examples/packet_provider.yaml" "$tmp")
    chmod 0600 "$tmp"
    chown_owner "$tmp"
    mv -fT "$tmp" "$D$CONFIG"
    config_note="written (mode 0600${owner:+, owner $owner}): every key at its default"
fi

# ---- manifest: drop what the previous install had and this one does not ----------------
stale_dirs=()
for entry in "${!OLD[@]}"; do
    [ -z "${NEW["$entry"]:-}" ] || continue
    kind=${entry%% *}; path=${entry#* }
    case "$kind" in
        f|l) remove_entry "$kind" "$path" ;;
        d) stale_dirs+=("$path") ;;
        v) remove_entry v "$path" ;;
    esac
done
[ "${#stale_dirs[@]}" = 0 ] || remove_dirs "${stale_dirs[@]}"
tmp=$D$MANIFEST.tmp-install.$$
printf '%s\n' "${NEW_LIST[@]}" > "$tmp"
mv -fT "$tmp" "$D$MANIFEST"
finished=1

say ""
say "Installed:"
say "  remotes        $REMOTES/{ipam/packet,hooks/alias_ip,vnm/alias_sdnat,lib/packet_provider}"
say "  frontend python $FRONT_PY (IPAM driver and hook); VNM driver: /usr/bin/env python3 on the hosts"
say "  config         $CONFIG ($config_note)"
say "  leases         $STATE_DIR/packet/<reservation>/<IP>"
say "  logs           $LOG_DIR/ipam-packet.log, $LOG_DIR/hook-alias_ip.log"
say "  hook templates $SHARE/hooks/{running_hook,hotplug_hook,done_hook}"
say "  command        $VAR/bin/packet-provider${COMMAND_LINK:+ (and $COMMAND_LINK)}: check, reconcile"
if [ "$do_lab" = 1 ]; then
    say "  lab            $VAR/lab/packet_lab: PYTHONPATH=$VAR/lab:$REMOTES/lib $FRONT_PY -m packet_lab.packet --help"
fi
say "  manifest       $MANIFEST ($VAR/install.sh --uninstall removes what it lists)"
say "  compatibility  $REMOTES/hooks/alias_ip/alias_ip.rb -> alias_ip.py (hooks made from the"
say "                 old documentation, COMMAND alias_ip/alias_ip.rb, run the new hook)"
say ""

# ---- what the administrator does next --------------------------------------------------
conf_file=${oned_conf:-$D$ETC/oned.conf}
PYTHONPATH=$D$REMOTES/lib python3 -B -m packet_provider.hook.registration oned-conf --oned-conf "$conf_file"
echo ""
if [ "$do_hooks" = 1 ]; then
    echo "Creating the alias_ip hooks in oned:"
    templates=()
    for name in "${HOOK_NAMES[@]}"; do templates+=("$SHARE/hooks/$name"); done
    fallback=()
    if [ -n "$owner" ]; then
        owner_home=$(getent passwd "$owner" | cut -d: -f6)
        [ -z "$owner_home" ] || fallback=(--fallback-auth "$owner_home/.one/one_auth")
    fi
    PYTHONPATH=$REMOTES/lib "$RUN_PY" -B -m packet_provider.hook.registration hooks --config "$CONFIG" \
        "${fallback[@]}" "${templates[@]}"
else
    echo "Create the hooks (as oneadmin), or run ./install.sh --hooks to do it through oned:"
    echo ""
    for name in "${HOOK_NAMES[@]}"; do echo "  onehook create $SHARE/hooks/$name"; done
fi
echo ""
echo "Then copy the VNM driver to the hosts: onehost sync --force"
