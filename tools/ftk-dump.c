/* tools/ftk-dump.c: print a tensor stream as JSON lines for jq, or (--from-json) turn such
 * lines back into a stream. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/message_json.h"
#include "ftk/stream.h"

static const char usage_text[] =
    "usage: ftk dump [--shapes | --typed] [FILE...]\n"
    "       ftk dump --from-json [--level N] [FILE...] > stream.fts\n"
    "\n"
    "Prints every message of each tensor stream (stdin when no FILE or FILE is -) as one JSON\n"
    "line: {\"kind\": K, \"meta\": {...}, \"tensors\": {\"NAME\": nested list}}.\n"
    "\n"
    "  --shapes      each tensor as {\"dtype\", \"shape\"} instead of its values\n"
    "  --typed       each tensor as {\"dtype\", \"shape\", \"data\"}: lossless, readable by --from-json\n"
    "  --from-json   read JSON lines (typed or plain) and write a stream; plain nested lists become\n"
    "                I32 when all values are integers, else F32. Lines whose kind is \"end\" are\n"
    "                skipped: the writer adds the end message itself.\n"
    "  --level N     zstd level of the written stream (default 3; 0 writes it uncompressed)\n"
    "  --help, --version\n"
    "\n"
    "Examples:\n"
    "  ftk dump batches.fts | jq -c '.tensors.input_ids | length'\n"
    "  ftk dump --typed a.fts | jq -c 'select(.kind != \"example\" or .meta.index != \"3\")' | ftk dump --from-json > b.fts\n"
    "\n"
    "Exit status: 0 success, 1 input or runtime error, 2 usage error.\n";

struct dump_opts {
    enum ftk_json_form form;
    int from_json;
    int level;
    char **files;
    int n_files;
};

static int parse_args(int argc, char **argv, struct dump_opts *o)
{
    memset(o, 0, sizeof *o);
    o->level = 3;
    o->files = calloc((size_t)argc, sizeof *o->files);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage_text, stdout); exit(0); }
        else if (!strcmp(a, "--version")) { printf("ftk-dump %s\n", FTK_VERSION); exit(0); }
        else if (!strcmp(a, "--shapes")) o->form = FTK_JSON_SHAPES;
        else if (!strcmp(a, "--typed")) o->form = FTK_JSON_TYPED;
        else if (!strcmp(a, "--from-json")) o->from_json = 1;
        else if (!strcmp(a, "--level")) {
            char *end;
            if (i + 1 >= argc || (o->level = (int)strtol(argv[++i], &end, 10), *end) || o->level < 0 || o->level > 19) {
                fprintf(stderr, "ftk-dump: error: --level needs a number 0..19\n");
                return -1;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ftk-dump: error: unknown option %s\n%s", a, usage_text);
            return -1;
        } else o->files[o->n_files++] = argv[i];
    }
    if (o->n_files == 0)
        o->files[o->n_files++] = "-";
    return 0;
}

static ftk_status dump_one(FILE *in, const char *name, enum ftk_json_form form)
{
    struct ftk_stream_reader *r;
    FTK_TRY(ftk_stream_reader_open(in, name, &r));
    struct ftk_message m;
    ftk_message_init(&m);
    ftk_status st;
    while ((st = ftk_stream_read(r, &m)) == FTK_OK)
        if ((st = ftk_message_write_json(&m, form, stdout)) != FTK_OK)
            break;
    ftk_message_free(&m);
    ftk_stream_reader_close(r);
    return st == FTK_E_EOF ? FTK_OK : st;
}

/* Lines of JSON to one stream; the first message must be the stream header. */
static ftk_status from_json(FILE *in, const char *name, struct ftk_stream_writer *w, size_t *line_no)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    ftk_status st = FTK_OK;
    while (st == FTK_OK && (n = getline(&line, &cap, in)) >= 0) {
        ++*line_no;
        if (n == 0 || strspn(line, " \t\r\n") == (size_t)n)
            continue;
        char where[600];
        snprintf(where, sizeof where, "%s:%zu", name, *line_no);
        struct ftk_message m;
        ftk_message_init(&m);
        st = ftk_message_from_json(&m, line, (size_t)n, where);
        const char *kind = ftk_message_kind(&m);
        if (st == FTK_OK && !kind)
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: no \"kind\"", where);
        if (st == FTK_OK && strcmp(kind, "end") != 0 && (st = ftk_stream_write(w, &m)) != FTK_OK)
            st = ftk_error_wrap(st, "%s", where);
        ftk_message_free(&m);
    }
    free(line);
    if (st == FTK_OK && ferror(in))
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: read error: %s", name, strerror(errno));
    return st;
}

int main(int argc, char **argv)
{
    struct dump_opts o;
    if (parse_args(argc, argv, &o) != 0) {
        free(o.files);
        return 2;
    }
    ftk_status st = FTK_OK;
    struct ftk_stream_writer *w = NULL;
    size_t line_no = 0;
    if (o.from_json)
        st = ftk_stream_writer_open(stdout, o.level, &w);
    for (int i = 0; i < o.n_files && st == FTK_OK; i++) {
        int is_stdin = !strcmp(o.files[i], "-");
        FILE *in = is_stdin ? stdin : fopen(o.files[i], "rb");
        if (!in) {
            fprintf(stderr, "ftk-dump: error: %s: %s\n", o.files[i], strerror(errno));
            return 1;
        }
        const char *name = is_stdin ? "<stdin>" : o.files[i];
        st = o.from_json ? from_json(in, name, w, &line_no) : dump_one(in, name, o.form);
        if (!is_stdin)
            fclose(in);
    }
    if (st == FTK_OK && w)
        st = ftk_stream_writer_finish(w, NULL);
    ftk_stream_writer_close(w);
    if (st == FTK_OK && fflush(stdout) != 0)
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "writing output: %s", strerror(errno));
    free(o.files);
    if (st != FTK_OK) {
        fprintf(stderr, "ftk-dump: error: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}
