# The host side of the dead-man switch (orchestrator/security/deadman.py), copied into each job dir.
# Usage: sh deadman.sh MODE DIR [ARGS]; DIR holds saved.*/restore.* (the old rules), pid, decision, outcome.
# Exactly one party decides a job: `ln -s` is atomic and refuses an existing name, so the revert
# ("reverted") and the confirming connection ("confirmed") can never both win.
set -u
mode=$1 dir=$2

finish() {  # the job's outcome, written whole
    printf '%s\n' "$1" > "$dir/outcome.tmp" && mv -f "$dir/outcome.tmp" "$dir/outcome"
}

load() {  # load every $1.* file of the job: restore.* (the rules saved before) or new.*
    rc=0
    for f in "$dir/$1.iptables" "$dir/$1.ip6tables" "$dir/$1.nft"; do
        [ -e "$f" ] || continue
        case $f in
            *.iptables) iptables-restore < "$f" || rc=$? ;;
            *.ip6tables) ip6tables-restore < "$f" || rc=$? ;;
            *.nft) nft -f "$f" || rc=$? ;;
        esac
        [ "$1" = new ] && [ "$rc" -ne 0 ] && break
    done
    return "$rc"
}

restore() {  # the saved rules; then the caller's undo (inv harden's old daemon configs), logged
    load restore; rc=$?
    if [ -e "$dir/undo.sh" ]; then
        sh "$dir/undo.sh" "$dir" >> "$dir/undo.log" 2>&1 || echo "undo.sh exited $?" >> "$dir/undo.log"
    fi
    return "$rc"
}

ours() {  # $1 (a pid) is alive, not a zombie, and its command line carries the job token $2
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
    case $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) in Z*|X*|'') return 1 ;; esac
    tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

stop_revert() {  # end the revert's process group (it leads its own session); "yes" when it is gone
    pid=$(cat "$dir/pid" 2>/dev/null || true)
    ours "$pid" "$1" && kill -TERM "-$pid" 2>/dev/null
    n=0
    while ours "$pid" "$1" && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    ours "$pid" "$1" && kill -KILL "-$pid" 2>/dev/null && sleep 0.2
    if ours "$pid" "$1"; then echo no; else echo yes; fi
}

case $mode in
arm)  # DIR WINDOW TOKEN: start the revert in a session of its own (it outlives SSH); print its pid
    setsid sh "$dir/deadman.sh" revert "$dir" "$3" "$4" < /dev/null >> "$dir/revert.log" 2>&1 &
    n=0
    while [ ! -s "$dir/pid" ]; do
        n=$((n + 1)); [ "$n" -gt 100 ] && { echo "revert did not start" >&2; exit 3; }
        sleep 0.1
    done
    pid=$(cat "$dir/pid")
    ours "$pid" "$4" || { echo "revert (pid $pid) is not running" >&2; exit 3; }
    echo "pid=$pid" ;;
revert)  # DIR WINDOW TOKEN: after WINDOW seconds, restore the old rules unless the job was decided
    echo "$$" > "$dir/pid.tmp" && mv -f "$dir/pid.tmp" "$dir/pid"
    sleep "$3"
    ln -sn reverted "$dir/decision" 2>/dev/null || exit 0
    if restore; then finish reverted; else finish "revert-failed rc=$?"; fi ;;
apply)  # DIR TOKEN: load the new.* files, only while the job's revert is armed and undecided
    # One command for every file: a later file must never arrive after the revert restored (our session
    # may be cut by the first one and come back once the old rules are).
    if [ -e "$dir/decision" ] || ! ours "$(cat "$dir/pid" 2>/dev/null)" "$3"; then
        echo "the revert is not armed (or already decided): nothing applied" >&2; exit 4
    fi
    if load new; then echo 0 > "$dir/applied"; else rc=$?; echo "$rc" > "$dir/applied"; exit "$rc"; fi ;;
cancel)  # DIR TOKEN: decide "confirmed" unless the revert decided first (or the apply failed); end the revert
    if [ "$(cat "$dir/applied" 2>/dev/null)" != 0 ]; then
        echo "decision=none applied=$(cat "$dir/applied" 2>/dev/null || echo unknown)"; exit 0
    fi
    ln -sn confirmed "$dir/decision" 2>/dev/null
    decision=$(readlink "$dir/decision")
    if [ "$decision" = confirmed ]; then
        gone=$(stop_revert "$3")
        [ -e "$dir/outcome" ] || finish confirmed
        echo "decision=confirmed gone=$gone"
    else
        echo "decision=$decision gone=unknown"
    fi ;;
abandon)  # DIR TOKEN: the change failed: decide "reverted" now, end the revert, restore
    ln -sn reverted "$dir/decision" 2>/dev/null
    gone=$(stop_revert "$3")
    if [ "$(readlink "$dir/decision")" = reverted ] && [ ! -e "$dir/outcome" ]; then
        if restore; then finish "reverted (apply failed)"; else finish "revert-failed rc=$?"; fi
    fi
    echo "outcome=$(cat "$dir/outcome" 2>/dev/null) gone=$gone" ;;
settle)  # DIR TOKEN SECONDS: wait (at most SECONDS) for the revert to end; then make sure of an outcome
    pid=$(cat "$dir/pid" 2>/dev/null || true)
    n=0
    while [ ! -e "$dir/outcome" ] && ours "$pid" "$3" && [ "$n" -lt $(($4 * 10)) ]; do
        sleep 0.1; n=$((n + 1))
    done
    if [ ! -e "$dir/outcome" ]; then
        if [ -z "$pid" ]; then
            finish not-armed
        elif ours "$pid" "$3"; then
            echo "outcome=pending"; exit 0
        else  # the revert died undecided or mid-restore (killed, or the host rebooted): finish its work
            ln -sn reverted "$dir/decision" 2>/dev/null
            if [ "$(readlink "$dir/decision")" = confirmed ]; then finish confirmed
            elif restore; then finish "reverted (by a later run)"
            else finish "revert-failed rc=$?"
            fi
        fi
    fi
    echo "outcome=$(cat "$dir/outcome")" ;;
*)
    echo "unknown mode $mode" >&2; exit 2 ;;
esac
