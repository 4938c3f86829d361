/*
 * glob.c - the include/exclude patterns of every pass.  fnmatch(3) was
 * the obvious choice, but tensor names are dotted paths
 * ("model.layers.0.mlp.up_proj.weight") and users expect "*.weight" and
 * "*mlp*" to cross the dots; fnmatch without FNM_PATHNAME does that, so
 * this is a thin, documented wrapper that fixes the flags in one place.
 */
#include <fnmatch.h>
#include "passes/slim.h"

int slim_glob_match(const char *pattern, const char *name)
{
    return fnmatch(pattern, name, 0) == 0;
}
