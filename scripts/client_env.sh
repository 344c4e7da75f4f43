#!/usr/bin/env bash
# build_client_env VENV LOCK CHECK: an isolated virtual environment for third-party clients of gte-st's models,
# installed from a lock file (every package pinned, installed without dependency resolution, so a cold build is
# download + unpack only and gives the same set every time), torch==2.13.0 (CPU) first so nothing pulls a CUDA
# build. Idempotent: when CHECK (Python code) runs in the environment, nothing is installed. The wheels are kept in
# $GTE_ST_WHEELHOUSE (default ~/.cache/gte-st/wheels) between runs. Sourced by the setup_*_env.sh scripts.
build_client_env() {
  local venv="$1" lock="$2" check="$3"
  local python="${PYTHON:-python3}" torch_spec="${GTE_ST_TORCH:-torch==2.13.0}"
  if "$venv/bin/python" -W ignore -c "$check" 2>/dev/null; then
    return 0
  fi
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install "$torch_spec" 2>&1 | { grep -v "^WARNING: Location" || true; }
  # The locked packages come from a wheelhouse kept between runs (pip's own cache keeps nothing here: the index
  # answers are not cacheable); what it lacks is downloaded into it first.
  local wheelhouse="${GTE_ST_WHEELHOUSE:-$HOME/.cache/gte-st/wheels}"
  mkdir -p "$wheelhouse"
  if ! "${pip[@]}" install --no-deps --no-index --find-links "$wheelhouse" -r "$lock" 2>/dev/null; then
    "${pip[@]}" download --no-deps -d "$wheelhouse" -r "$lock" 2>&1 | { grep -v "^WARNING: Location" || true; }
    "${pip[@]}" install --no-deps --no-index --find-links "$wheelhouse" -r "$lock" 2>&1 \
      | { grep -v "^WARNING: Location" || true; }
  fi
  "$venv/bin/python" -m pip --disable-pip-version-check check >&2 \
    || { echo "$venv: the packages of $lock do not fit together" >&2; return 1; }
  "$venv/bin/python" -W ignore -c "$check" || { echo "$venv: installing $lock failed" >&2; return 1; }
}

# add_release VENV DIR SPEC MODULE VERSION: one more release of a pure-Python package, wheel only, in VENV/DIR, run
# with `PYTHONPATH=VENV/DIR` on top of the environment's own packages (which must satisfy its requirements).
add_release() {
  local venv="$1" dir="$2" spec="$3" module="$4" version="$5"
  if PYTHONPATH="$venv/$dir" "$venv/bin/python" -W ignore -c \
    "import $module as m, sys; sys.exit(m.__version__ != '$version')" 2>/dev/null; then
    return 0
  fi
  "$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps --upgrade --target "$venv/$dir" \
    "$spec" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
