#!/bin/bash
# SPDX-License-Identifier: MIT
# The man pages: every option layerfs --help lists is documented in layerfs.1, both pages
# render without warnings, have the sections the house style asks for, and are installed.
. "$(dirname "$0")/tap.sh"

MAN1=$T_TOP/man/layerfs.1
MAN5=$T_TOP/man/layerfs.conf.5
ok "man/layerfs.1 exists" test -s "$MAN1"
ok "man/layerfs.conf.5 exists" test -s "$MAN5"

help=$("$LAYERFS" --help)
is "$?" "0" "--help exits 0"
longs=$(printf '%s\n' "$help" | grep -oE -- '--[a-z][a-z-]+' | sort -u)
shorts=$(printf '%s\n' "$help" | grep -oE -- '^ +-[a-zA-Z]' | tr -d ' -' | sort -u)
ok "--help lists long options" test -n "$longs"
for o in $longs; do
    # mdoc spells --name as "Fl -name".
    ok "$o is documented in layerfs.1" grep -qE -- "Fl ${o#-}([^a-z-]|$)" "$MAN1"
done
for o in $shorts; do
    ok "-$o is documented in layerfs.1" grep -qE -- "Fl $o([^a-zA-Z]|$)" "$MAN1"
done
# And the other way round: every option getopt accepts is in --help.
for o in config disk demo foreground pidfile read-only threads bounce-budget cache verbose \
    version help; do
    like "$help" "--$o" "--$o is in --help"
done

if command -v groff >/dev/null; then
    for m in "$MAN1" "$MAN5"; do
        is "$(groff -mdoc -ww -z "$m" 2>&1)" "" "$(basename "$m") renders without warnings"
    done
fi
for s in NAME SYNOPSIS DESCRIPTION EXAMPLES OPTIONS CONFIGURATION LAYERS BACKENDS SIGNALS \
    "EXIT STATUS" FILES NOTES "SEE ALSO"; do
    ok "layerfs.1 has section $s" grep -qx ".Sh $s" "$MAN1"
done
like "$(grep -A3 '^.Sh SYNOPSIS' "$MAN1"; grep -c fusermount3 "$MAN1")" "[1-9]" \
    "the synopsis says how to unmount"
for s in NAME SYNOPSIS DESCRIPTION EXAMPLES "SEE ALSO"; do
    ok "layerfs.conf.5 has section $s" grep -qx ".Sh $s" "$MAN5"
done
ok "both pages are installed (dist_man_MANS)" \
    grep -qE '^dist_man_MANS \+= man/layerfs\.1 man/layerfs\.conf\.5' "$T_TOP/Makefile.am"

done_testing
