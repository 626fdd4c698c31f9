#!/bin/bash
# SPDX-License-Identifier: MIT
# Every option and command layerfs-img --help lists is documented in man/layerfs-img.1.
. "$(dirname "$0")/tap.sh"
MAN=$T_TOP/man/layerfs-img.1
help=$("$LAYERFS_IMG" --help)
is "$?" 0 "layerfs-img --help exits 0"
for opt in $(printf '%s\n' "$help" | grep -oE '(^|[ ,])--?[a-zA-Z][a-zA-Z-]*' | tr -d ' ,' | sort -u); do
    name=${opt#-}
    name=${name#-}
    if [ "${opt#--}" != "$opt" ]; then pat="Fl -$name"; else pat="Fl $name"; fi
    if grep -q -- "$pat" "$MAN"; then _t_result 0 "option $opt documented"
    else _t_result 1 "option $opt documented"; diag "no '$pat' in $MAN"; fi
done
for cmd in create info check map commit; do
    like "$help" "^  $cmd" "--help lists $cmd"
    if grep -q -- "^\.It Cm $cmd" "$MAN"; then _t_result 0 "command $cmd documented"
    else _t_result 1 "command $cmd documented"; fi
done
ok "man/layerfs-overlay.5 exists" test -s "$T_TOP/man/layerfs-overlay.5"
done_testing
