/* ftk/paths.h: where the running tool finds its plugins and data files.
 * Build tree: build/bin/ftk-x -> build/plugins, build/share/ftk. Installed: PREFIX/bin ->
 * PREFIX/lib/ftk/plugins, PREFIX/share/ftk. FTK_PLUGIN_DIR / FTK_DATA_DIR override. */
#ifndef FTK_PATHS_H
#define FTK_PATHS_H

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Directory holding plugins/{peft,loss} (the one that exists), no trailing slash. */
FTK_API const char *ftk_plugin_dir(void);
/* Directory holding data files (templates/ ...). */
FTK_API const char *ftk_data_dir(void);

#ifdef __cplusplus
}
#endif
#endif
