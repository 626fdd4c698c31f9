#!/bin/bash
# SPDX-License-Identifier: MIT
# layerfs-img and its man page agree: every command and option --help lists (and every
# short option getopt does not reject) is documented in man/layerfs-img.1, every command
# and option the page documents is in --help, and every command --help lists is one the
# program knows.  t/3070 renders every page in man/.
. "$(dirname "$0")/tap.sh"
MAN=$T_TOP/man/layerfs-img.1
ok "man/layerfs-img.1 exists" test -s "$MAN"
ok "man/layerfs-overlay.5 exists" test -s "$T_TOP/man/layerfs-overlay.5"
help=$("$LAYERFS_IMG" --help)
is "$?" 0 "layerfs-img --help exits 0"

# documented PATTERN WHAT: one check that the page has a line matching PATTERN.
documented() {
    if grep -qE -- "$1" "$MAN"; then _t_result 0 "$2 documented"
    else _t_result 1 "$2 documented"; diag "no line matching '$1' in $MAN"; fi
}

opts=$(printf '%s\n' "$help" | sed -n '/^Options:/,/^$/p' |
       grep -oE '(^|[ ,])--?[a-zA-Z][a-zA-Z-]*' | tr -d ' ,' | sort -u)
ok "--help lists options" test -n "$opts"
for opt in $opts; do
    name=${opt#-}
    name=${name#-}
    if [ "${opt#--}" != "$opt" ]; then pat="Fl -$name([^a-z-]|$)"
    else pat="Fl $name([^a-zA-Z]|$)"; fi
    documented "$pat" "option $opt"
done

# Every short option getopt accepts is in --help: ask it about each letter.
letters() { tr -d '\n-' | fold -w1 | LC_ALL=C sort | tr -d '\n'; }
accepted=
for c in {a..z} {A..Z}; do
    LC_ALL=C "$LAYERFS_IMG" info "-$c" </dev/null 2>&1 | grep -q "invalid option" || accepted="$accepted$c"
done
is "$(printf '%s' "$accepted" | letters)" \
    "$(printf '%s\n' "$opts" | grep -E '^-[a-zA-Z]$' | letters)" \
    "the short options getopt accepts are those --help lists"

cmds=$(printf '%s\n' "$help" | sed -n '/^Commands:/,/^$/p' |
       sed -n 's/^  \([a-z][a-z-]*\)\( .*\)\{0,1\}$/\1/p')
ok "--help lists commands ($(echo $cmds))" test -n "$cmds"
for cmd in $cmds; do
    documented "^\.It Cm $cmd( |$)" "command $cmd"
    not_ok_cmd "command $cmd is one layerfs-img knows" \
        sh -c '"$1" "$2" 2>&1 | grep -q "unknown command"' sh "$LAYERFS_IMG" "$cmd"
done

# And the other way round, from the page's COMMANDS and OPTIONS sections.
section() { awk -v s="$1" '$0 == ".Sh " s { on = 1; next } /^\.Sh/ { on = 0 } on' "$MAN"; }
for cmd in $(section COMMANDS | sed -n 's/^\.It Cm \([a-z-]*\).*/\1/p'); do
    like "$cmds" "^$cmd$" "command $cmd (layerfs-img.1) is in --help"
done
for o in $(section OPTIONS | grep '^\.It Fl' | grep -oE 'Fl -?[a-zA-Z][a-z-]*' |
           sed 's/^Fl /-/' | sort -u); do
    like "$opts" "^$o$" "option $o (layerfs-img.1) is in --help"
done
done_testing
