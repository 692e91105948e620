// kernels/cuda/cxxabi.cu: the three C++ ABI functions (and the personality routine) that nvcc's
// kernel launch stubs need, for a libftk linked by a C compiler without libstdc++.
//
// Why: since CUDA 12.x the host stub of every __global__ function caches its cudaKernel_t in a
// function-local static with a dynamic initializer (crt/host_runtime.h, __cudaLaunch). g++ guards
// that with __cxa_guard_acquire/release/abort and an exception landing pad (the personality
// routine), all from libstdc++, which the Makefile's C link of libftk.so, the tools and the tests
// does not name. nvcc would drop the guard with -D__NV_LEGACY_LAUNCH (or g++ with
// -fno-threadsafe-statics), but neither can be set from a source file; adding -lstdc++ to
// CUDA_LIBS is the cleaner fix and would make this file unnecessary (docs/backend.md, CUDA).
//
// The guards follow the Itanium C++ ABI (3.3.2): byte 0 of the guard is the "initialised" flag;
// acquire returns 1 with a process-wide recursive lock held when the caller must initialise,
// release sets the flag and unlocks, abort unlocks. Correct for any caller (the lock is held only
// during a first initialisation, as in libstdc++'s generic implementation).
// The personality routine runs only when a C++ exception unwinds through one of these frames,
// which a C caller never does; if it ever happens inside a C++ program, the call is handed to
// that program's libstdc++ (found with dlsym), and without one it stops the unwind.
// All of it is hidden (-fvisibility=hidden): libftk.so exports none of it.
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <unwind.h>

static pthread_mutex_t guard_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

extern "C" int __cxa_guard_acquire(uint64_t *g)
{
    if (__atomic_load_n((const unsigned char *)g, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&guard_lock);
    if (*(volatile unsigned char *)g) {
        pthread_mutex_unlock(&guard_lock);
        return 0;
    }
    return 1;   // the caller initialises, then calls release (or abort if that throws)
}

extern "C" void __cxa_guard_release(uint64_t *g)
{
    __atomic_store_n((unsigned char *)g, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&guard_lock);
}

extern "C" void __cxa_guard_abort(uint64_t *g)
{
    (void)g;
    pthread_mutex_unlock(&guard_lock);
}

typedef _Unwind_Reason_Code (*personality_fn)(int, _Unwind_Action, _Unwind_Exception_Class,
                                              struct _Unwind_Exception *, struct _Unwind_Context *);

extern "C" _Unwind_Reason_Code __gxx_personality_v0(int version, _Unwind_Action actions,
                                                    _Unwind_Exception_Class cls,
                                                    struct _Unwind_Exception *ue,
                                                    struct _Unwind_Context *ctx)
{
    // hidden here, so dlsym finds only a real libstdc++'s (never this one)
    personality_fn real = (personality_fn)dlsym(RTLD_DEFAULT, "__gxx_personality_v0");
    if (real && real != __gxx_personality_v0)
        return real(version, actions, cls, ue, ctx);
    return _URC_FATAL_PHASE1_ERROR;
}
