/* tests/unit/check.h: the unit-test harness. Each test program is a main() that calls
 * CHECK* macros inside TEST(name) blocks and ends with `return check_summary();`, which prints
 * "#summary passed=N failed=M" for tests/run.sh. Failures print file:line and both values. */
#ifndef FTK_TEST_CHECK_H
#define FTK_TEST_CHECK_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static int check_passed_, check_failed_, check_cur_failed_;
static const char *check_name_ = "?";

static inline void check_begin_(const char *name) { check_name_ = name; check_cur_failed_ = 0; }
static inline void check_end_(void)
{
    if (check_cur_failed_) { check_failed_++; printf("FAIL %s\n", check_name_); }
    else { check_passed_++; printf("ok   %s\n", check_name_); }
    fflush(stdout);
}
/* TEST("name") { ... } runs the block once as one counted test. */
#define TEST(name) for (int once_ = (check_begin_(name), 1); once_; once_ = (check_end_(), 0))

#define CHECK_FAIL_(...) do { check_cur_failed_ = 1; printf("  %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } while (0)
#define CHECK(cond) do { if (!(cond)) CHECK_FAIL_("CHECK(%s) failed", #cond); } while (0)
#define CHECK_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
    if (a_ != b_) CHECK_FAIL_("%s == %lld, expected %s == %lld", #a, a_, #b, b_); } while (0)
#define CHECK_STR(a, b) do { const char *a_ = (a), *b_ = (b); \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) CHECK_FAIL_("%s == \"%s\", expected \"%s\"", #a, \
        a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } while (0)
/* |a-b| <= tol * max(1, |b|) */
#define CHECK_NEAR(a, b, tol) do { double a_ = (a), b_ = (b); \
    if (!(fabs(a_ - b_) <= (tol) * fmax(1.0, fabs(b_)))) \
        CHECK_FAIL_("%s == %.9g, expected %.9g (tol %g)", #a, a_, b_, (double)(tol)); } while (0)
/* An ftk_status call that must succeed; prints the library's message if not. */
#define CHECK_OK(expr) do { ftk_status s_ = (expr); if (s_ != FTK_OK) \
    CHECK_FAIL_("%s returned %d: %s", #expr, (int)s_, ftk_last_error()); } while (0)
/* An ftk_status call that must fail with `code` and a message containing `substr`. */
#define CHECK_ERR(expr, code, substr) do { ftk_status s_ = (expr); \
    if (s_ != (code)) CHECK_FAIL_("%s returned %d, expected %d (%s)", #expr, (int)s_, (int)(code), ftk_last_error()); \
    else if ((substr) && !strstr(ftk_last_error(), (substr))) \
        CHECK_FAIL_("%s: message \"%s\" lacks \"%s\"", #expr, ftk_last_error(), (const char *)(substr)); } while (0)

static inline int check_summary(void)
{
    printf("#summary passed=%d failed=%d\n", check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}

/* Path of a file under the repository root (tests run from the root). */
#define FIXTURE(rel) ("tests/fixtures/" rel)

#endif
