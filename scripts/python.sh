# Sourced by the scripts that make virtualenvs: find a Python interpreter.
#
#   find_python MINOR [OVERRIDE]   # prints the path of a Python >= 3.MINOR; OVERRIDE is tried first
#
# pyenv's 3.13 and 3.12 come first (these machines have Python 3.13.0 under pyenv).
find_python() {
  local minor="$1" override="${2:-}" py pyenv_root
  pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
  for py in "$override" "$pyenv_root"/versions/3.13*/bin/python "$pyenv_root"/versions/3.12*/bin/python \
    python3.13 python3.12 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "import sys; sys.exit(0 if sys.version_info >= (3, $minor) else 1)" 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  echo "needs Python >= 3.$minor (pyenv install 3.13.0, or set the script's *_PYTHON variable)" >&2
  return 1
}
