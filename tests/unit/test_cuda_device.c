/* tests/unit/test_cuda_device.c: run by `make test-cuda` (tests/run.sh --cuda). Reports the GPU
 * and checks that the CUDA build sees one; on a machine without a GPU it counts as skipped. */
#include "check.h"
#include "ftk/cuda.h"

int main(void)
{
    int n = ftk_cuda_device_count();
    if (!ftk_cuda_built() || n == 0) {
        printf("skipped: no GPU (built with CUDA: %d)\n", ftk_cuda_built());
        printf("#summary passed=0 failed=0 skipped=1\n");
        return 0;
    }
    TEST("device info") {
        char name[256];
        int maj, min;
        size_t mem;
        CHECK_OK(ftk_cuda_device_info(0, name, sizeof name, &maj, &min, &mem));
        printf("  device 0: %s, sm_%d%d, %.1f GiB\n", name, maj, min, (double)mem / (1 << 30));
        CHECK(maj >= 8);   /* sm_80 and sm_90 are the targets the build compiles for */
    }
    return check_summary();
}
