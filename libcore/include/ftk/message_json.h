/* ftk/message_json.h: messages as JSON lines (what `ftk dump` prints and reads back).
 *
 * Plain form: {"kind": K, "meta": {...all metadata...}, "tensors": {"NAME": nested list}}.
 * Typed form (FTK_JSON_TYPED): each tensor is {"dtype": D, "shape": [...], "data": nested list},
 * which ftk_message_from_json turns back into the identical message. Shapes form
 * (FTK_JSON_SHAPES): each tensor is {"dtype": D, "shape": [...]}, no values.
 * Floats print with enough digits to round-trip (F32 %.9g, F64 %.17g); NaN and infinities,
 * which JSON lacks, print as the strings "NaN", "Infinity", "-Infinity". */
#ifndef FTK_MESSAGE_JSON_H
#define FTK_MESSAGE_JSON_H

#include <stdio.h>
#include "message.h"

#ifdef __cplusplus
extern "C" {
#endif

enum ftk_json_form { FTK_JSON_PLAIN = 0, FTK_JSON_TYPED = 1, FTK_JSON_SHAPES = 2 };

/* Writes one line (with '\n'). FTK_E_IO on a write error. */
FTK_API ftk_status ftk_message_write_json(const struct ftk_message *m, enum ftk_json_form form, FILE *out);
/* Parses one JSON line into an initialised, empty message. Tensors in plain form (bare nested
 * lists) become I32 when every value is an integer, else F32. `where` names the line. */
FTK_API ftk_status ftk_message_from_json(struct ftk_message *m, const char *json, size_t len, const char *where);

#ifdef __cplusplus
}
#endif
#endif
