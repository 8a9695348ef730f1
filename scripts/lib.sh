# Shared by scripts/run and scripts/test: install what a fresh Debian machine lacks. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "need root for: $*  (install sudo or run as root)"; return 1
  fi
}

apt_install() {
  say "installing from the OS packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

find_python() {
  for py in python3.11 python3.12 python3.13 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 14)))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  say "Python 3.11 to 3.13 is needed (Debian 12: apt-get install python3)"; return 1
}

# A venv with the package and the extras asked for ("demo", "dev"), refreshed when pyproject.toml changes.
# The extras installed so far are remembered, so `run` after `test` (or the other way) installs nothing twice.
ensure_venv() {
  local extras="${1:-}" py stamp hash have want
  py="$(find_python)"
  if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$py" -m venv "$VENV"
  fi
  stamp="$VENV/.installed"
  hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  have=""
  if [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$hash" ]; then have="$(tail -n +2 "$stamp")"; fi
  # no extras at all: grep finds no line and fails, which pipefail would turn into a silent exit of the caller
  want="$(printf '%s\n' ${have//,/ } ${extras//,/ } | sort -u | { grep -v '^$' || true; } | paste -sd, -)"
  if [ ! -f "$stamp" ] || [ "$(head -n1 "$stamp")" != "$hash" ] || [ "$want" != "$have" ]; then
    say "installing uav-relay${want:+ [$want]} into the venv"
    mkdir -p "$ROOT/var"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e "$ROOT${want:+[$want]}"; } > "$ROOT/var/pip.log" 2>&1; then
      tail -n 30 "$ROOT/var/pip.log" >&2; say "install failed (whole log: var/pip.log)"; return 1
    fi
    printf '%s\n%s\n' "$hash" "$want" > "$stamp"
  fi
}

ensure_mosquitto_binary() {
  if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto
  fi
  export PATH="$PATH:/usr/sbin"
}

port_answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
