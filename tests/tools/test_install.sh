#!/usr/bin/env bash
# tests/tools/test_install.sh: make install PREFIX=... gives working tools, the library, headers
# and a pkg-config file that a program can build against.
. "$(dirname "$0")/lib.sh"
P="$T/prefix"
check "make install" make -C "$ROOT" --no-print-directory BUILD="${FTK_BUILD:-build}" install PREFIX="$P"
check "installed ftk dump runs" bash -c "printf '{\"kind\":\"stream\"}\n' | '$P/bin/ftk' dump --from-json | '$P/bin/ftk' dump"
check "headers installed" test -f "$P/include/ftk/stream.h"
check "pkg-config finds ftk" env PKG_CONFIG_PATH="$P/lib/pkgconfig" pkg-config --exists ftk
cat > "$T/user.c" <<'C'
#include <stdio.h>
#include <ftk/stream.h>
int main(void) {
    struct ftk_message m; ftk_message_init(&m);
    if (ftk_stream_header_init(&m, "user") != FTK_OK) return 1;
    printf("%s\n", ftk_message_kind(&m));
    ftk_message_free(&m);
    return 0;
}
C
check "a program builds against the installed library" bash -c \
    "cc -o '$T/user' '$T/user.c' \$(PKG_CONFIG_PATH='$P/lib/pkgconfig' pkg-config --cflags --libs ftk) -Wl,-rpath,'$P/lib'"
check_eq "and runs" "$("$T/user" 2>&1)" "stream"
summary
