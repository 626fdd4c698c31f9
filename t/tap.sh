# SPDX-License-Identifier: MIT
# t/tap.sh: the one helper every shell test sources.  TAP output, scratch directories,
# cleanup hooks that run last-in-first-out even on signals, and daemon start/stop.
#
#   . "$(dirname "$0")/tap.sh"
#   ok "desc" cmd args...        pass if cmd exits 0
#   not_ok_cmd "desc" cmd ...    pass if cmd exits non-zero
#   is "$got" "$want" "desc"     string equality
#   like "$got" "regex" "desc"   grep -E match
#   cmp_file A B "desc"          byte equality, prints the first differing offset
#   skip_all "reason"            whole test skipped (prints 1..0 # SKIP)
#   require_cmd CMD...           skip_all unless every CMD exists
#   require_root, require_fuse   skip_all unless root / /dev/fuse usable
#   on_exit "shell code"         run at exit, last registered first
#   start_daemon MNT ARGS...     run layerfs -f ARGS MNT, wait for its pidfile, register stop
#   stop_daemon                  SIGTERM, wait; fails the test if it had to be SIGKILLed
#   crash_daemon                 SIGKILL (a crash), wait, remove the dead mount
#   done_testing                 print the plan and exit with the right status
#
# $SCRATCH is a fresh directory for this test; it is removed unless a check failed.
# $LAYERFS and $LAYERFS_IMG are the built binaries.

set -u

T_NAME=$(basename "$0" .t)
T_SRCDIR=$(cd "$(dirname "$0")" && pwd)
T_TOP=$(cd "$T_SRCDIR/.." && pwd)
BUILDDIR=${LAYERFS_BUILDDIR:-$T_TOP}
LAYERFS=${LAYERFS:-$BUILDDIR/layerfs}
LAYERFS_IMG=${LAYERFS_IMG:-$BUILDDIR/layerfs-img}

_t_num=0
_t_failed=0
_t_exit_hooks=()
_t_daemon_pid=
_t_daemon_mnt=

_t_run_exit_hooks() {
    local i
    for ((i = ${#_t_exit_hooks[@]} - 1; i >= 0; i--)); do
        eval "${_t_exit_hooks[$i]}" >/dev/null 2>&1 || true
    done
    _t_exit_hooks=()
}

on_exit() { _t_exit_hooks+=("$1"); }

_t_on_exit() {
    local rc=$?
    _t_run_exit_hooks
    if [ -n "${SCRATCH:-}" ] && [ -d "$SCRATCH" ]; then
        if [ "$_t_failed" -eq 0 ] && [ "$rc" -eq 0 ]; then
            rm -rf "$SCRATCH"
        else
            echo "# scratch directory kept: $SCRATCH"
        fi
    fi
}
trap _t_on_exit EXIT
trap 'echo "# interrupted"; exit 130' INT TERM HUP

SCRATCH=$(mktemp -d "${TMPDIR:-/var/tmp}/layerfs-$T_NAME.XXXXXX")

_t_result() {
    # _t_result PASS(0/1) DESC
    _t_num=$((_t_num + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $_t_num - $2"
    else
        echo "not ok $_t_num - $2"
        _t_failed=$((_t_failed + 1))
    fi
}

diag() { printf '# %s\n' "$*"; }

ok() {
    local desc=$1; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    _t_result $((rc != 0)) "$desc"
    if [ $rc -ne 0 ]; then
        diag "command failed (exit $rc): $*"
        printf '%s\n' "$out" | head -n 20 | sed 's/^/#   /'
    fi
    return $rc
}

not_ok_cmd() {
    local desc=$1; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    _t_result $((rc == 0)) "$desc"
    if [ $rc -eq 0 ]; then
        diag "command unexpectedly succeeded: $*"
        printf '%s\n' "$out" | head -n 20 | sed 's/^/#   /'
    fi
    return $((rc == 0))
}

is() {
    if [ "$1" = "$2" ]; then
        _t_result 0 "$3"
    else
        _t_result 1 "$3"
        diag "got:  '$1'"
        diag "want: '$2'"
        return 1
    fi
}

like() {
    if printf '%s\n' "$1" | grep -Eq -- "$2"; then
        _t_result 0 "$3"
    else
        _t_result 1 "$3"
        diag "got:  '$1'"
        diag "want match for: $2"
        return 1
    fi
}

cmp_file() {
    local out
    if out=$(cmp -- "$1" "$2" 2>&1); then
        _t_result 0 "$3"
    else
        _t_result 1 "$3"
        diag "$out"
        return 1
    fi
}

skip_all() {
    echo "1..0 # SKIP $*"
    _t_run_exit_hooks
    exit 0
}

require_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip_all "$c not installed"
    done
}

require_root() { [ "$(id -u)" -eq 0 ] || skip_all "needs root"; }

require_fuse() {
    [ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] || skip_all "/dev/fuse not usable"
    require_cmd fusermount3
}

# start_daemon MNT ARGS...: layerfs in the foreground (backgrounded here) with a pidfile;
# returns once the pidfile exists, i.e. the mount is ready.  Fails if it does not appear.
start_daemon() {
    local mnt=$1; shift
    local pidfile="$SCRATCH/layerfs.pid"
    rm -f "$pidfile"
    "$LAYERFS" -f --pidfile "$pidfile" "$@" "$mnt" >"$SCRATCH/layerfs.log" 2>&1 &
    _t_daemon_pid=$!
    _t_daemon_mnt=$mnt
    on_exit "_t_force_stop"
    local i
    for ((i = 0; i < 200; i++)); do
        [ -s "$pidfile" ] && return 0
        if ! kill -0 "$_t_daemon_pid" 2>/dev/null; then
            diag "layerfs exited before it was ready:"
            sed 's/^/#   /' "$SCRATCH/layerfs.log"
            _t_daemon_pid=
            return 1
        fi
        sleep 0.05
    done
    diag "layerfs did not write its pidfile within 10 s"
    return 1
}

_t_force_stop() {
    if [ -n "$_t_daemon_pid" ]; then
        kill -KILL "$_t_daemon_pid" 2>/dev/null
        wait "$_t_daemon_pid" 2>/dev/null
        _t_daemon_pid=
    fi
    if [ -n "$_t_daemon_mnt" ]; then
        fusermount3 -u -z "$_t_daemon_mnt" 2>/dev/null || umount -l "$_t_daemon_mnt" 2>/dev/null
        _t_daemon_mnt=
    fi
}

# stop_daemon: SIGTERM and wait up to 20 s; a SIGKILL needed is a failed check.
# Sets DAEMON_STATUS to the daemon's exit status.
stop_daemon() {
    DAEMON_STATUS=
    [ -n "$_t_daemon_pid" ] || return 0
    kill -TERM "$_t_daemon_pid" 2>/dev/null
    local i
    for ((i = 0; i < 400; i++)); do
        kill -0 "$_t_daemon_pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$_t_daemon_pid" 2>/dev/null; then
        _t_result 1 "layerfs stopped on SIGTERM"
        diag "had to SIGKILL layerfs"
        _t_force_stop
        return 1
    fi
    wait "$_t_daemon_pid"
    DAEMON_STATUS=$?
    _t_daemon_pid=
    if mountpoint -q "$_t_daemon_mnt" 2>/dev/null; then
        _t_result 1 "mount gone after layerfs exited"
        fusermount3 -u -z "$_t_daemon_mnt" 2>/dev/null
    fi
    _t_daemon_mnt=
    return 0
}

# crash_daemon: kill -9 the daemon, as a crash would, and lazily remove its dead mount.
crash_daemon() { _t_force_stop; }

done_testing() {
    echo "1..$_t_num"
    [ "$_t_failed" -eq 0 ] || exit 1
    exit 0
}
