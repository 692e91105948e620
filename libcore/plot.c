/* libcore/plot.c: metrics JSONL -> SVG small multiples (implements ftk/plot.h).
 *
 * One panel per metric, stacked, all sharing the step axis; each run a colour, each field of a
 * panel a dash style. Axis ticks at 1, 2, 5 x 10^k ("nice numbers", Heckbert, Graphics Gems
 * 1990). Hand-written SVG 1.1: no dependency, any browser shows it. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/plot.h"

struct series {           /* one numeric field of one run */
    char *key;
    double *v;            /* (n) NaN where the line lacks the field */
};
struct run {
    char *name;
    size_t n, cap;        /* lines read */
    double *step;         /* (n) */
    struct series *s;
    size_t n_s;
};
struct ftk_plot {
    struct run runs[FTK_PLOT_MAX_RUNS];
    size_t n_runs;
};

ftk_status ftk_plot_init(struct ftk_plot **out)
{
    *out = calloc(1, sizeof **out);
    FTK_FAIL_IF(!*out, FTK_E_NOMEM, "out of memory");
    return FTK_OK;
}

void ftk_plot_free(struct ftk_plot *p)
{
    if (!p)
        return;
    for (size_t r = 0; r < p->n_runs; r++) {
        struct run *u = &p->runs[r];
        for (size_t i = 0; i < u->n_s; i++) {
            free(u->s[i].key);
            free(u->s[i].v);
        }
        free(u->s);
        free(u->step);
        free(u->name);
    }
    free(p);
}

static struct series *run_series(const struct run *u, const char *key)
{
    for (size_t i = 0; i < u->n_s; i++)
        if (!strcmp(u->s[i].key, key))
            return &u->s[i];
    return NULL;
}

/* Room for one more line in every series of the run (new slots NaN). */
static ftk_status run_grow(struct run *u)
{
    if (u->n < u->cap)
        return FTK_OK;
    size_t cap = u->cap ? 2 * u->cap : 64;
    double *st = realloc(u->step, cap * sizeof *st);
    FTK_FAIL_IF(!st, FTK_E_NOMEM, "out of memory");
    u->step = st;
    for (size_t i = 0; i < u->n_s; i++) {
        double *v = realloc(u->s[i].v, cap * sizeof *v);
        FTK_FAIL_IF(!v, FTK_E_NOMEM, "out of memory");
        for (size_t j = u->cap; j < cap; j++)
            v[j] = NAN;
        u->s[i].v = v;
    }
    u->cap = cap;
    return FTK_OK;
}

static ftk_status run_set(struct run *u, const char *key, double v)
{
    struct series *s = run_series(u, key);
    if (!s) {
        struct series *ns = realloc(u->s, (u->n_s + 1) * sizeof *ns);
        FTK_FAIL_IF(!ns, FTK_E_NOMEM, "out of memory");
        u->s = ns;
        s = &u->s[u->n_s];
        s->key = strdup(key);
        s->v = malloc((u->cap ? u->cap : 1) * sizeof *s->v);
        FTK_FAIL_IF(!s->key || !s->v, FTK_E_NOMEM, "out of memory");
        for (size_t j = 0; j < u->cap; j++)
            s->v[j] = NAN;
        u->n_s++;
    }
    s->v[u->n] = v;
    return FTK_OK;
}

static ftk_status read_line(struct run *u, const char *line, size_t len, const char *name, size_t no)
{
    cJSON *o = cJSON_ParseWithLength(line, len);
    FTK_FAIL_IF(!o, FTK_E_FORMAT, "%s:%zu: not a JSON line (metrics are JSON lines, one object per step)", name, no);
    ftk_status st = FTK_OK;
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
    const cJSON *loss = cJSON_GetObjectItemCaseSensitive(o, "loss");
    if (!cJSON_IsObject(o))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s:%zu: expected a JSON object", name, no);
    else if (!cJSON_IsNumber(step))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s:%zu: no numeric \"step\" field", name, no);
    else if (!cJSON_IsNumber(loss))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s:%zu: no numeric \"loss\" field", name, no);
    else if ((st = run_grow(u)) == FTK_OK) {
        u->step[u->n] = step->valuedouble;
        for (const cJSON *it = o->child; it && st == FTK_OK; it = it->next)
            if (cJSON_IsNumber(it) && it->string && strcmp(it->string, "step") != 0)
                st = run_set(u, it->string, it->valuedouble);
        if (st == FTK_OK)
            u->n++;
    }
    cJSON_Delete(o);
    return st;
}

ftk_status ftk_plot_read_jsonl(struct ftk_plot *p, FILE *in, const char *name)
{
    FTK_FAIL_IF(p->n_runs >= FTK_PLOT_MAX_RUNS, FTK_E_INVALID, "%s: at most %d metrics files", name, FTK_PLOT_MAX_RUNS);
    struct run *u = &p->runs[p->n_runs];
    memset(u, 0, sizeof *u);
    u->name = strdup(name);
    FTK_FAIL_IF(!u->name, FTK_E_NOMEM, "out of memory");
    p->n_runs++;
    char *line = NULL;
    size_t cap = 0, no = 0;
    ssize_t len;
    ftk_status st = FTK_OK;
    while (st == FTK_OK && (len = getline(&line, &cap, in)) >= 0) {
        no++;
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue;
        st = read_line(u, line, (size_t)len, name, no);
    }
    free(line);
    if (st == FTK_OK && ferror(in))
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: read error: %s", name, strerror(errno));
    FTK_TRY(st);
    FTK_FAIL_IF(u->n == 0, FTK_E_FORMAT, "%s: no metrics lines", name);
    return FTK_OK;
}

/* ---- drawing ---------------------------------------------------------------------------- */

struct panel {
    const char *title;
    const char *keys[2];
};
/* The default panels, in order: what a LLaMA-Factory user looks at first (loss), then the
 * preference metrics TRL logs, then the optimizer. */
static const struct panel default_panels[] = {
    {.title = "loss", .keys = {"loss"}},
    {.title = "reward margin (chosen - rejected)", .keys = {"rewards/margins"}},
    {.title = "rewards", .keys = {"rewards/chosen", "rewards/rejected"}},
    {.title = "reward accuracy", .keys = {"rewards/accuracies"}},
    {.title = "gradient norm (before clipping)", .keys = {"grad_norm"}},
    {.title = "learning rate", .keys = {"lr"}},
};
#define MAX_PANELS 16

static const char *const colors[FTK_PLOT_MAX_RUNS] = {
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
};
static const char *const dashes[2] = {"", " stroke-dasharray=\"6 3\""};

/* Margins of a panel, pixels. */
enum { LEFT = 72, RIGHT = 24, PANEL_TOP = 26, PANEL_BOTTOM = 30 };

static int has_key(const struct ftk_plot *p, const char *key)
{
    for (size_t r = 0; r < p->n_runs; r++) {
        const struct series *s = run_series(&p->runs[r], key);
        if (s)
            for (size_t i = 0; i < p->runs[r].n; i++)
                if (isfinite(s->v[i]))
                    return 1;
    }
    return 0;
}

/* Heckbert's nice number: 1, 2, 5 or 10 x 10^k near x (round) or at least x. */
static double nice(double x, int round_it)
{
    double e = floor(log10(x)), f = x / pow(10, e), nf;
    if (round_it)
        nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
    else
        nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nf * pow(10, e);
}

struct axis {
    double lo, hi, step;   /* range, extended to whole ticks */
};
static struct axis nice_axis(double lo, double hi, int ticks)
{
    if (!(hi > lo)) {      /* one value, or all equal: a range around it */
        double d = lo != 0 ? fabs(lo) * 0.1 : 1;
        lo -= d;
        hi += d;
    }
    struct axis a;
    a.step = nice(nice(hi - lo, 0) / (ticks - 1), 1);
    a.lo = floor(lo / a.step) * a.step;
    a.hi = ceil(hi / a.step) * a.step;
    return a;
}

/* A tick label: enough digits for the tick step, %g style for large/small values. */
static void fmt_tick(char *buf, size_t n, double v, double step)
{
    if (fabs(v) < step * 1e-6)
        v = 0;
    double m = fabs(v) > fabs(step) ? fabs(v) : fabs(step);
    if (m != 0 && (m >= 1e5 || m < 1e-3))
        snprintf(buf, n, "%.2g", v);
    else {
        int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
        snprintf(buf, n, "%.*f", dec, v);
    }
}

static void xml_text(FILE *out, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '&': fputs("&amp;", out); break;
        case '"': fputs("&quot;", out); break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t')
                fputc(*s, out);
        }
    }
}

static void draw_panel(FILE *out, const struct ftk_plot *p, const struct panel *pn, struct axis xa, int top,
                       int width, int height, int last)
{
    double lo = INFINITY, hi = -INFINITY;
    for (size_t r = 0; r < p->n_runs; r++)
        for (int k = 0; k < 2 && pn->keys[k]; k++) {
            const struct series *s = run_series(&p->runs[r], pn->keys[k]);
            for (size_t i = 0; s && i < p->runs[r].n; i++)
                if (isfinite(s->v[i])) {
                    lo = fmin(lo, s->v[i]);
                    hi = fmax(hi, s->v[i]);
                }
        }
    struct axis ya = nice_axis(lo, hi, 5);
    int x0 = LEFT, x1 = width - RIGHT, y0 = top + PANEL_TOP, y1 = top + height - PANEL_BOTTOM;
#define PX(x) (x0 + ((x) - xa.lo) / (xa.hi - xa.lo) * (x1 - x0))
#define PY(y) (y1 - ((y) - ya.lo) / (ya.hi - ya.lo) * (y1 - y0))
    fprintf(out, "<g class=\"panel\">\n<text x=\"%d\" y=\"%d\" class=\"ptitle\">", x0, top + 17);
    xml_text(out, pn->title);
    if (pn->keys[1]) {
        fputs(" (", out);
        xml_text(out, pn->keys[0]);
        fputs(" solid, ", out);
        xml_text(out, pn->keys[1]);
        fputs(" dashed)", out);
    }
    fputs("</text>\n", out);
    fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" class=\"frame\"/>\n", x0, y0, x1 - x0, y1 - y0);
    char lab[64];
    for (double y = ya.lo; y <= ya.hi + ya.step * 1e-6; y += ya.step) {
        fmt_tick(lab, sizeof lab, y, ya.step);
        fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" class=\"grid\"/>"
                     "<text x=\"%d\" y=\"%.1f\" class=\"ytick\">%s</text>\n",
                x0, PY(y), x1, PY(y), x0 - 6, PY(y) + 4, lab);
    }
    for (double x = xa.lo; x <= xa.hi + xa.step * 1e-6; x += xa.step) {
        fprintf(out, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" class=\"grid\"/>", PX(x), y0, PX(x), y1);
        fmt_tick(lab, sizeof lab, x, xa.step);
        fprintf(out, "<text x=\"%.1f\" y=\"%d\" class=\"xtick\">%s</text>\n", PX(x), y1 + 15, lab);
    }
    if (last)
        fprintf(out, "<text x=\"%d\" y=\"%d\" class=\"xlabel\">step</text>\n", (x0 + x1) / 2, y1 + 28);
    for (size_t r = 0; r < p->n_runs; r++)
        for (int k = 0; k < 2 && pn->keys[k]; k++) {
            const struct run *u = &p->runs[r];
            const struct series *s = run_series(u, pn->keys[k]);
            if (!s)
                continue;
            /* A polyline per stretch of finite values; a lone point gets a dot. */
            size_t i = 0;
            while (i < u->n) {
                while (i < u->n && !isfinite(s->v[i]))
                    i++;
                size_t j = i;
                while (j < u->n && isfinite(s->v[j]))
                    j++;
                if (j - i == 1)
                    fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n",
                            PX(u->step[i]), PY(s->v[i]), colors[r]);
                else if (j > i) {
                    fprintf(out, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\"%s points=\"", colors[r], dashes[k]);
                    for (size_t t = i; t < j; t++)
                        fprintf(out, "%s%.1f,%.1f", t > i ? " " : "", PX(u->step[t]), PY(s->v[t]));
                    fputs("\"/>\n", out);
                }
                i = j;
            }
        }
    fputs("</g>\n", out);
#undef PX
#undef PY
}

ftk_status ftk_plot_write_svg(const struct ftk_plot *p, const struct ftk_plot_style *style, FILE *out)
{
    FTK_FAIL_IF(p->n_runs == 0, FTK_E_INVALID, "no metrics to plot");
    int width = style && style->width > 0 ? style->width : 720;
    int ph = style && style->panel_height > 0 ? style->panel_height : 180;
    FTK_FAIL_IF(width < 200 || ph < 80, FTK_E_INVALID, "the plot needs a width of at least 200 and panels of at least 80 pixels");

    struct panel panels[MAX_PANELS];
    size_t n_panels = 0;
    char *list = NULL;
    if (style && style->metrics) {
        list = strdup(style->metrics);
        FTK_FAIL_IF(!list, FTK_E_NOMEM, "out of memory");
        for (char *save = NULL, *k = strtok_r(list, ",", &save); k; k = strtok_r(NULL, ",", &save)) {
            if (n_panels == MAX_PANELS || !has_key(p, k)) {
                ftk_status st = n_panels == MAX_PANELS
                    ? ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "at most %d metrics", MAX_PANELS)
                    : ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "no metrics line has a numeric \"%s\"", k);
                free(list);
                return st;
            }
            panels[n_panels++] = (struct panel){.title = k, .keys = {k}};
        }
    } else {
        for (size_t i = 0; i < sizeof default_panels / sizeof *default_panels; i++)
            if (has_key(p, default_panels[i].keys[0]))
                panels[n_panels++] = default_panels[i];
    }
    if (n_panels == 0) {
        free(list);
        FTK_FAIL(FTK_E_INVALID, "nothing to plot");
    }

    double xlo = INFINITY, xhi = -INFINITY;
    for (size_t r = 0; r < p->n_runs; r++)
        for (size_t i = 0; i < p->runs[r].n; i++) {
            xlo = fmin(xlo, p->runs[r].step[i]);
            xhi = fmax(xhi, p->runs[r].step[i]);
        }
    struct axis xa = nice_axis(xlo, xhi, 8);
    int head = (style && style->title ? 30 : 8) + (p->n_runs > 1 ? 20 : 0);
    int height = head + (int)n_panels * ph + 14;

    fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                 "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
                 "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
            width, height, width, height);
    fputs("<style>.frame{fill:none;stroke:#444;stroke-width:1}.grid{stroke:#ddd;stroke-width:1}"
          ".ytick{text-anchor:end;fill:#333}.xtick{text-anchor:middle;fill:#333}"
          ".xlabel{text-anchor:middle;fill:#333}.ptitle{font-weight:bold;fill:#222}"
          ".title{font-size:15px;font-weight:bold;fill:#111}.legend{fill:#333}</style>\n", out);
    fprintf(out, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", width, height);
    int y = 8;
    if (style && style->title) {
        fprintf(out, "<text x=\"%d\" y=\"%d\" class=\"title\">", LEFT, y + 16);
        xml_text(out, style->title);
        fputs("</text>\n", out);
        y += 30;
    }
    if (p->n_runs > 1) {   /* legend: one entry per run */
        int x = LEFT;
        for (size_t r = 0; r < p->n_runs; r++) {
            fprintf(out, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>"
                         "<text x=\"%d\" y=\"%d\" class=\"legend\">", x, y + 6, x + 18, y + 6, colors[r], x + 22, y + 10);
            xml_text(out, p->runs[r].name);
            fputs("</text>\n", out);
            x += 40 + 7 * (int)strlen(p->runs[r].name);
        }
        y += 20;
    }
    for (size_t i = 0; i < n_panels; i++)
        draw_panel(out, p, &panels[i], xa, y + (int)i * ph, width, ph, i + 1 == n_panels);
    fputs("</svg>\n", out);
    free(list);
    FTK_FAIL_IF(ferror(out), FTK_E_IO, "write error: %s", strerror(errno));
    return FTK_OK;
}
