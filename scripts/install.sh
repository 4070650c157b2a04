#!/usr/bin/env bash
# Install or upgrade PrivatAI on a Debian VPS as a hardened systemd service.
#
#   sudo scripts/install.sh [--dry-run] [--no-apt] [--no-start] [SOURCE_DIR]
#
# SOURCE_DIR is a PrivatAI checkout or unpacked sdist (default: the repository
# this script lives in). Safe to run again: it installs missing Debian
# packages, (re)installs PrivatAI into /opt/privatai/venv, keeps an existing
# /etc/privatai/backends.yaml and /etc/privatai/env, replaces the unit file and
# restarts the service. It downloads nothing but Debian and PyPI packages.
# docs/INSTALL.md explains every step.
set -euo pipefail

PREFIX=/opt/privatai
VENV=$PREFIX/venv
CONF_DIR=/etc/privatai
CONFIG=$CONF_DIR/backends.yaml
ENV_FILE=$CONF_DIR/env
DB_PATH=/var/lib/privatai/privatai.db
UNIT=privatai.service
UNIT_PATH=/etc/systemd/system/$UNIT
ADMIN=/usr/local/sbin/privatai-admin
# python3-venv for the venv; build-essential and cmake compile llama.cpp for
# llama-cpp-python (about 5 minutes on 2 cores); sqlite3 for backups.
APT_PACKAGES=(python3 python3-venv python3-dev build-essential cmake sqlite3 ca-certificates)

DRY_RUN=0
NO_APT=0
NO_START=0
SRC=""

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    cat <<'EOF'

Options:
  --dry-run   print the steps and commands, change nothing
  --no-apt    do not install Debian packages (they are already there)
  --no-start  install and enable the unit, but do not (re)start it
  -h, --help  this text
EOF
}

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# Run a command, or only show it under --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '    $'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# Point store.path in a backends.yaml at $DB_PATH, editing the text so the
# operator's comments survive: replace an existing store.path line, add one
# to an existing store: block, or append a store: block.
rewrite_store_path() {
    local file=$1 db=${2:-$DB_PATH}
    python3 - "$file" "$db" <<'PY'
import re, sys
path, db = sys.argv[1], sys.argv[2]
lines = open(path, encoding="utf-8").read().splitlines()
start = next((i for i, l in enumerate(lines) if re.match(r"store:\s*(#.*)?$", l)), None)
if start is None:
    if any(re.match(r"store:", l) for l in lines):
        sys.exit(f"{path}: 'store:' is not a block mapping; set store.path: {db} by hand")
    lines += ["", "# Production database (StateDirectory of privatai.service).", "store:", f"  path: {db}"]
else:
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    block = range(start + 1, end)
    indents = [re.match(r"\s*", lines[i]).group(0) for i in block
               if lines[i].strip() and not lines[i].lstrip().startswith("#")]
    indent = indents[0] if indents else "  "
    hit = next((i for i in block if re.match(r"\s+path\s*:", lines[i])
                and re.match(r"\s*", lines[i]).group(0) == indent), None)
    if hit is None:
        lines.insert(start + 1, f"{indent}path: {db}")
    else:
        lines[hit] = f"{indent}path: {db}"
open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
PY
}

parse_args() {
    while (($#)); do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --no-apt) NO_APT=1 ;;
            --no-start) NO_START=1 ;;
            -h|--help) usage; exit 0 ;;
            -*) die "unknown option $1 (see --help)" ;;
            *) [[ -z $SRC ]] || die "only one SOURCE_DIR"; SRC=$1 ;;
        esac
        shift
    done
    if [[ -z $SRC ]]; then
        SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    fi
    SRC=$(cd "$SRC" 2>/dev/null && pwd) || die "source directory not found: $SRC"
    [[ -f $SRC/setup.cfg && -d $SRC/privatai ]] || die "$SRC is not a PrivatAI source tree (no setup.cfg or privatai/)"
    [[ -f $SRC/systemd/$UNIT ]] || die "$SRC/systemd/$UNIT is missing"
    [[ -f $SRC/backends.yaml || -f $CONFIG ]] || die "$SRC/backends.yaml is missing (and $CONFIG does not exist yet)"
}

install_packages() {
    step "Debian packages: ${APT_PACKAGES[*]}"
    if ((NO_APT)); then note "skipped (--no-apt)"; return; fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then note "all installed"; return; fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

install_app() {
    step "Virtual environment $VENV"
    if [[ -x $VENV/bin/python ]]; then
        note "exists"
    else
        run install -d -m 0755 "$PREFIX"
        run python3 -m venv "$VENV"
    fi
    step "PrivatAI from $SRC into $VENV (llama-cpp-python compiles for ~5 min the first time)"
    # pip always reinstalls a local source tree, so this is also the upgrade;
    # dependencies already satisfied are kept.
    run "$VENV/bin/pip" install --disable-pip-version-check "${SRC}[embedded]"
    step "Documentation in $PREFIX/docs"
    if [[ -f $SRC/docs/INSTALL.md ]]; then
        run install -D -m 0644 "$SRC/docs/INSTALL.md" "$PREFIX/docs/INSTALL.md"
    fi
}

install_config() {
    step "Configuration $CONFIG (store.path: $DB_PATH)"
    run install -d -m 0755 "$CONF_DIR"
    if [[ -f $CONFIG ]]; then
        note "exists, left unchanged"
    else
        run install -m 0644 "$SRC/backends.yaml" "$CONFIG"
        if ((DRY_RUN)); then
            note "rewrite store.path in $CONFIG to $DB_PATH (comments kept)"
        else
            rewrite_store_path "$CONFIG"
        fi
    fi
    if ! ((DRY_RUN)); then
        local actual
        actual=$("$VENV/bin/python" -c 'import sys
from privatai.config import load_config
print(load_config(sys.argv[1]).store.path)' "$CONFIG") || die "$CONFIG does not validate; fix it and run again"
        [[ $actual == "$DB_PATH" ]] || note "WARNING: store.path is $actual; the service can only write under /var/lib/privatai"
    fi

    step "Secrets file $ENV_FILE (0640 root:root, read by systemd, not by the service user)"
    if [[ -f $ENV_FILE ]]; then
        note "exists, left unchanged"
    else
        if ((DRY_RUN)); then
            note "create $ENV_FILE with a random PRIVATAI_METRICS_TOKEN"
        else
            local token
            token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
            (umask 077 && cat >"$ENV_FILE" <<EOF
# Environment for privatai.service (systemd reads it as root).
# Admin token for /metrics: send it as "Authorization: Bearer <token>".
PRIVATAI_METRICS_TOKEN=$token
# API keys of kind: openai backends, named by their api_key_env, e.g.:
# UPSTREAM_API_KEY=sk-...
EOF
            )
        fi
        run chown root:root "$ENV_FILE"
        run chmod 0640 "$ENV_FILE"
    fi
}

install_unit() {
    step "systemd unit $UNIT_PATH and admin helper $ADMIN"
    # The unit is the project's; local changes go into a drop-in
    # (systemctl edit privatai), so replacing it on upgrade is safe.
    run install -m 0644 "$SRC/systemd/$UNIT" "$UNIT_PATH"
    run install -m 0755 "$SRC/scripts/privatai-admin" "$ADMIN"
    if ! ((DRY_RUN)) && [[ ! -d /run/systemd/system ]]; then
        note "systemd is not running here: skipped daemon-reload, enable and start"
        return
    fi
    step "Enable and (re)start $UNIT"
    run systemctl daemon-reload
    run systemctl enable "$UNIT"
    if ((NO_START)); then
        note "not started (--no-start)"
    else
        # restart, not start: after an upgrade the running process must pick
        # up the new code. It drains open streams first (TimeoutStopSec).
        run systemctl restart "$UNIT"
        if ! ((DRY_RUN)); then
            sleep 2
            systemctl is-active --quiet "$UNIT" || {
                journalctl -u "$UNIT" -n 30 --no-pager >&2 || true
                die "$UNIT did not stay up; see the log above"
            }
        fi
    fi
}

next_steps() {
    local done="Done."
    ((DRY_RUN)) && done="Dry run: nothing was changed."
    cat <<EOF

$done Next steps:
  1. Edit $CONFIG (backends), then: systemctl reload privatai
  2. Check config and backends:   privatai-admin check
  3. First account and API key:   privatai-admin accounts create NAME
                                  privatai-admin keys create NAME --label laptop
  4. Reverse proxy with TLS: deploy/nginx-privatai.conf or deploy/Caddyfile
  5. Logs: journalctl -u privatai -f
EOF
}

main() {
    parse_args "$@"
    if ! ((DRY_RUN)); then
        ((EUID == 0)) || die "run as root (or use --dry-run)"
        command -v apt-get >/dev/null || die "this script is for Debian (apt-get not found)"
    fi
    # The service user must be able to read the venv and the config.
    umask 022
    install_packages
    install_app
    install_config
    install_unit
    next_steps
}

# Sourcing the script (the tests do) defines the functions without running.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
