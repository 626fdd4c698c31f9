#!/bin/bash
# SPDX-License-Identifier: MIT
# The man pages.  Every option layerfs accepts (its --help, made from the option table, and
# every short option getopt does not reject) is in layerfs.1 and every option there is in
# --help; every format, driver and key the configuration parser names is in layerfs.conf.5
# (or layerfs-virtio.7); every page in man/ renders without warnings, is installed, and
# the two daemon pages have the sections the house style asks for.
. "$(dirname "$0")/tap.sh"
require_cmd groff

MAN1=$T_TOP/man/layerfs.1
MAN5=$T_TOP/man/layerfs.conf.5
ok "man/layerfs.1 exists" test -s "$MAN1"
ok "man/layerfs.conf.5 exists" test -s "$MAN5"

# documented PATTERN WHAT PAGE...: one check that some PAGE has a line matching PATTERN.
documented() {
    local pat=$1 what=$2; shift 2
    if grep -qE -- "$pat" "$@"; then
        _t_result 0 "$what is documented in $(basename "$1")"
    else
        _t_result 1 "$what is documented in $(basename "$1")"
        diag "no line matching '$pat' in: $*"
    fi
}

help=$("$LAYERFS" --help)
is "$?" "0" "--help exits 0"
longs=$(printf '%s\n' "$help" | grep -oE -- '--[a-z][a-z-]+' | sort -u)
shorts=$(printf '%s\n' "$help" | grep -oE -- '^ +-[a-zA-Z]' | tr -d ' -' | sort -u)
ok "--help lists long options" test -n "$longs"
ok "--help lists short options" test -n "$shorts"
for o in $longs; do
    # mdoc spells --name as "Fl -name".
    documented "Fl ${o#-}([^a-z-]|$)" "$o" "$MAN1"
done
for o in $shorts; do
    documented "Fl $o([^a-zA-Z]|$)" "-$o" "$MAN1"
done

# Every short option getopt accepts is in --help: ask it about each letter.
accepted=
for c in {a..z} {A..Z}; do
    LC_ALL=C "$LAYERFS" "-$c" </dev/null 2>&1 | grep -q "invalid option" || accepted="$accepted$c"
done
letters() { tr -d '\n-' | fold -w1 | LC_ALL=C sort | tr -d '\n'; }
is "$(printf '%s' "$accepted" | letters)" "$(printf '%s' "$shorts" | letters)" \
    "the short options getopt accepts are those --help lists"

# And the other way round: every option in the OPTIONS section is in --help.
for o in $(awk '/^\.Sh OPTIONS/ { on = 1; next } /^\.Sh/ { on = 0 } on && /^\.It Fl/' "$MAN1" |
           grep -oE 'Fl -?[a-zA-Z][a-z-]*' | sed 's/^Fl /-/' | sort -u); do
    like "$help" "(^|[ ,])$o([ ,=]|$)" "$o (layerfs.1) is in --help"
done

# The configuration: the parser's messages name every format, driver and key.
formats=$("$LAYERFS" --disk 'd=format=zzz' /nonexistent 2>&1 | sed -n 's/.*(known: \(.*\))$/\1/p')
drivers=$("$LAYERFS" --disk 'd=driver=zzz' /nonexistent 2>&1 | sed -n 's/.*(known: \(.*\))$/\1/p')
ok "the parser names the formats ($formats)" test -n "$formats"
ok "the parser names the drivers ($drivers)" test -n "$drivers"
for f in $formats; do
    documented "^\.Cm $f( |$)" "format $f" "$MAN5"
done
keys=
for d in $drivers; do
    documented "^\.It Cm ([a-z-]+ , )*$d( |$)" "driver $d" "$MAN5"
    k=$("$LAYERFS" --disk "d=driver=$d,zzz=1" /nonexistent 2>&1 | sed -n \
        's/.*unknown key (layer keys: \([^;)]*\)\(; driver [^ ]* adds: \(.*\)\)\{0,1\})$/\1 \3/p')
    [ -n "$k" ] || _t_result 1 "the parser lists the keys of driver $d"
    keys="$keys $k"
done
for k in $(printf '%s\n' $keys | sort -u); do
    documented "^\.(It )?Cm $k( |$)" "key $k" "$MAN5" "$T_TOP/man/layerfs-virtio.7"
done

# Every page renders without a warning and is installed.
installed=$(sed -n 's/^dist_man_MANS *+\{0,1\}= *//p' "$T_TOP/Makefile.am" | tr ' ' '\n')
for m in "$T_TOP"/man/*.[1-9]; do
    page=$(basename "$m")
    is "$(groff -mandoc -ww -z "$m" 2>&1)" "" "$page renders without warnings"
    like "$installed" "^man/$page$" "$page is installed (dist_man_MANS)"
done

for s in NAME SYNOPSIS DESCRIPTION EXAMPLES OPTIONS CONFIGURATION LAYERS BACKENDS SIGNALS \
    "EXIT STATUS" FILES NOTES "SEE ALSO"; do
    ok "layerfs.1 has section $s" grep -qx ".Sh $s" "$MAN1"
done
like "$(grep -A3 '^.Sh SYNOPSIS' "$MAN1"; grep -c fusermount3 "$MAN1")" "[1-9]" \
    "the synopsis says how to unmount"
for s in NAME SYNOPSIS DESCRIPTION EXAMPLES "SEE ALSO"; do
    ok "layerfs.conf.5 has section $s" grep -qx ".Sh $s" "$MAN5"
done

done_testing
