# shellcheck shell=bash
# Sourced by scripts/check and scripts/up (from the repository root): run inside a virtual environment that
# has the project installed, editable, with every extra (`.[dev]`).
#
# - Already in a virtual environment ($VIRTUAL_ENV set)? That one is used.
# - Otherwise ./.venv is created on first use (with python3, or $PYTHON) and activated.
# - The project is (re)installed only when pyproject.toml changed since the last install into that venv.
# - Missing Debian packages (python3-venv here, chromium for scripts/check) are installed with apt-get
#   when running as root, or with sudo if there is one; elsewhere the message says what to install.

apt_install() {
  local missing=("$@")
  if ! command -v apt-get >/dev/null; then
    echo "$0: please install ${missing[*]} (no apt-get on this machine)" >&2
    return 1
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "$0: please install ${missing[*]}: apt-get install ${missing[*]} (as root)" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  echo "$0: installing ${missing[*]} with apt-get"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python=${PYTHON:-python3}
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$0: needs Python 3.11 or newer as '$python' (found: $("$python" --version 2>&1)); set PYTHON=..." >&2
      return 1
    fi
    # Debian and Ubuntu ship venv's pip bootstrap separately (python3-venv / python3.X-venv).
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
      apt_install "python3-venv" || return 1
    fi
    echo "$0: creating the virtual environment .venv"
    "$python" -m venv .venv || { rm -rf .venv; return 1; }
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

_venv_stamp="$VIRTUAL_ENV/.ab-router-installed"
_venv_want="$(python -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())') $PWD"
if [ "$(cat "$_venv_stamp" 2>/dev/null)" != "$_venv_want" ]; then
  echo "$0: installing the project and its dependencies into $VIRTUAL_ENV (first run: a minute or two)"
  python -m pip install --quiet --disable-pip-version-check -e '.[dev]' || return 1
  echo "$_venv_want" >"$_venv_stamp"
fi
unset _venv_stamp _venv_want
