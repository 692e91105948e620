# ftk: one non-recursive Makefile. `make help` lists the targets.
#
# Layout of the build tree (DESIGN.md section 1):
#   build/bin/ftk, build/bin/ftk-TOOL   executables (tools/ftk-TOOL.c, one file each)
#   build/lib/libftk.so, libftk.a      libcore + kernels (+ kernels/cuda when nvcc is found)
#   build/plugins/{peft,loss}/NAME.so   plugins/{peft,loss}/NAME.c
#   build/share/ftk/templates/          chat templates (tools/templates/*.json)
# Sources are found by wildcard: a new file in one of these folders needs no Makefile edit.

VERSION := 0.1.0
PREFIX  ?= /usr/local
BUILD   ?= build

# CUDA: auto | 1 (nvcc required) | 0. No comment after a value: make keeps the spaces.
CUDA ?= auto
ifeq ($(CUDA),auto)
  CUDA := $(if $(shell command -v nvcc 2>/dev/null),1,0)
endif
# SAN=address,undefined builds everything with those sanitizers (make test does this in build-san/).
SAN ?=

PKGS    := libzstd libarchive libcjson libpcre2-8 libutf8proc yaml-0.1
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)

CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-missing-field-initializers -Wno-psabi -fPIC -MMD -MP \
           -pthread -Ilibcore/include -Ilibcore $(PKG_CFLAGS) $(BLAS_CFLAGS) \
           -DFTK_VERSION='"$(VERSION)"'
LIB_CFLAGS := -DFTK_BUILDING_LIB -fvisibility=hidden
LDLIBS  += $(PKG_LIBS) $(BLAS_LIBS) -lm -ldl -pthread
ifneq ($(SAN),)
  CFLAGS  += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=$(SAN)
  CUDA := 0
endif

LIB_SRC := $(wildcard libcore/*.c libcore/*/*.c kernels/cpu/*.c)
CU_SRC  :=
ifeq ($(CUDA),1)
  NVCC      ?= nvcc
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC)))
  CU_ARCH   ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  NVFLAGS   ?= -O2 -std=c++17 $(CU_ARCH) -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra -Ilibcore/include -Ilibcore \
               -DFTK_BUILDING_LIB -DFTK_HAVE_CUDA
  CU_SRC    := $(wildcard kernels/cuda/*.cu)
  CFLAGS    += -DFTK_HAVE_CUDA -I$(CUDA_HOME)/include
  CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
endif

# The CUDA code is its own library, libftk-cuda.so, that libftk opens only when a tool asks for
# --device cuda: a CPU run never maps cuBLAS (which alone costs ~220 MB of RSS to load).
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CU_OBJ  := $(CU_SRC:%.cu=$(BUILD)/obj/%.o)
LIBCUDA := $(if $(CU_SRC),$(BUILD)/lib/libftk-cuda.so)
TOOL_SRC := $(wildcard tools/ftk-*.c)
TOOLS   := $(TOOL_SRC:tools/%.c=$(BUILD)/bin/%) $(BUILD)/bin/ftk
PLUGIN_SRC := $(wildcard plugins/peft/*.c plugins/loss/*.c)
PLUGINS := $(PLUGIN_SRC:plugins/%.c=$(BUILD)/plugins/%.so)
TEMPLATES := $(patsubst tools/templates/%,$(BUILD)/share/ftk/templates/%,$(wildcard tools/templates/*.json))
TEST_SRC := $(wildcard tests/unit/test_*.c)
TESTS   := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
# Each fuzz target also builds as a plain corpus replayer that make test runs.
REPLAYS := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=$(BUILD)/tests/replay_%)

# V=1 prints every command; by default one short line per file.
ifeq ($(V),1)
  Q :=
  say = @true
else
  Q := @
  say = @printf '  %-7s %s\n' $(1) $(2)
endif

LIBSO := $(BUILD)/lib/libftk.so
LIBA  := $(BUILD)/lib/libftk.a
# Tools and plugins find libftk.so next door, in the build tree and once installed.
RPATH := -Wl,-rpath,'$$ORIGIN/../lib'

.PHONY: all lib tools plugins tests test test-unit test-tools test-san test-cuda bench bench-cuda \
        fuzz deps install uninstall clean help demo info
all: info lib tools plugins templates

info:
	@echo "ftk $(VERSION): CUDA=$(CUDA) SAN=$(or $(SAN),none) BUILD=$(BUILD)"

lib: $(LIBSO) $(LIBA) $(LIBCUDA)
tools: $(TOOLS)
plugins: $(PLUGINS)
templates: $(TEMPLATES)
tests: $(TESTS) $(REPLAYS)

$(BUILD)/obj/libcore/%.o: libcore/%.c
	@mkdir -p $(@D)
	$(call say,CC,$<)
	$(Q)$(CC) $(CFLAGS) $(LIB_CFLAGS) -c $< -o $@
$(BUILD)/obj/kernels/cpu/%.o: kernels/cpu/%.c
	@mkdir -p $(@D)
	$(call say,CC,$<)
	$(Q)$(CC) $(CFLAGS) $(LIB_CFLAGS) -c $< -o $@
$(BUILD)/obj/kernels/cuda/%.o: kernels/cuda/%.cu
	@mkdir -p $(@D)
	$(call say,NVCC,$<)
	$(Q)$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIBSO): $(LIB_OBJ)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) -shared -Wl,-soname,libftk.so $(LDFLAGS) -o $@.tmp $^ $(LDLIBS) && mv -f $@.tmp $@
$(BUILD)/lib/libftk-cuda.so: $(CU_OBJ) $(LIBSO)
	$(call say,LD,$@)
	$(Q)$(CC) -shared -Wl,-soname,libftk-cuda.so $(LDFLAGS) -o $@.tmp $(CU_OBJ) -L$(BUILD)/lib -lftk \
	    -Wl,-rpath,'$$ORIGIN' $(CUDA_LIBS) $(LDLIBS) && mv -f $@.tmp $@
$(LIBA): $(LIB_OBJ)
	@mkdir -p $(@D)
	$(call say,AR,$@)
	$(Q)rm -f $@.tmp && ar rcs $@.tmp $^ && mv -f $@.tmp $@

# Link rules keep their dependency files hidden (.NAME.d) so bin/ holds only programs.
DEPF = -MF $(@D)/.$(@F).d
$(BUILD)/bin/%: tools/%.c $(LIBSO)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(DEPF) $(LDFLAGS) -o $@ $< -L$(BUILD)/lib -lftk $(RPATH) $(LDLIBS)
$(BUILD)/bin/ftk: tools/ftk.c $(LIBSO)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(DEPF) $(LDFLAGS) -o $@ $< -L$(BUILD)/lib -lftk $(RPATH) $(LDLIBS)

$(BUILD)/plugins/%.so: plugins/%.c $(LIBSO)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(DEPF) -fvisibility=hidden -shared $(LDFLAGS) -o $@ $< -L$(BUILD)/lib -lftk \
	    -Wl,-rpath,'$$ORIGIN/../../lib' $(LDLIBS)

$(BUILD)/share/ftk/templates/%: tools/templates/%
	@mkdir -p $(@D)
	$(call say,CP,$@)
	$(Q)cp $< $@

# Tests that load plugins (or the CUDA library) link libftk.so, as those do: one libftk per process.
$(BUILD)/tests/test_cuda_%: tests/unit/test_cuda_%.c tests/unit/check.h $(LIBSO) $(LIBCUDA)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(DEPF) $(LDFLAGS) -Itests/unit -o $@ $< -L$(BUILD)/lib -lftk -Wl,-rpath,'$$ORIGIN/../lib' $(LDLIBS)
$(BUILD)/tests/test_plugin_%: tests/unit/test_plugin_%.c tests/unit/check.h $(LIBSO) | $(PLUGINS)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(DEPF) $(LDFLAGS) -Itests/unit -o $@ $< -L$(BUILD)/lib -lftk -Wl,-rpath,'$$ORIGIN/../lib' $(LDLIBS)

# Unit tests link the static library so they can reach libcore's internal functions.
$(BUILD)/tests/%: tests/unit/%.c tests/unit/check.h $(LIBA)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(DEPF) $(LDFLAGS) -Itests/unit -o $@ $< $(LIBA) $(LDLIBS)

$(BUILD)/tests/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(LIBA)
	@mkdir -p $(@D)
	$(call say,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(DEPF) $(LDFLAGS) -o $@ $< tests/fuzz/replay.c $(LIBA) $(LDLIBS)

# ---- tests ---------------------------------------------------------------------------------
# make test: deps, build, unit tests, the same unit tests under ASan+UBSan, tool tests, and the
# fuzz corpora replayed; prints "N passed, N failed" last and fails if any failed.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all tests
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-san SAN=address,undefined OPT=-O1 lib tools plugins templates tests
	@tests/run.sh $(BUILD) build-san

test-unit: all tests
	@tests/run.sh --only-unit $(BUILD)
test-tools: all
	@tests/run.sh --only-tools $(BUILD)

# GPU checks: every CUDA op against its CPU twin (needs a GPU; skips visibly without one).
test-cuda:
	@$(MAKE) --no-print-directory CUDA=1 all tests
	@tests/run.sh --cuda $(BUILD)

# ---- fuzzing -------------------------------------------------------------------------------
# make fuzz FUZZ_SECONDS=300: each parser's libFuzzer target for that long, from the corpus.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_BINS := $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/%)
build-fuzz/%: tests/fuzz/%.c $(LIB_SRC)
	@mkdir -p $(@D)
	$(FUZZ_CC) -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Ilibcore/include -Ilibcore \
	    $(PKG_CFLAGS) $(BLAS_CFLAGS) -DFTK_VERSION='"$(VERSION)"' -o $@ $< $(LIB_SRC) $(PKG_LIBS) $(BLAS_LIBS) -lm -ldl -pthread
fuzz: $(FUZZ_BINS)
	@for f in $(FUZZ_BINS); do n=$$(basename $$f); mkdir -p build-fuzz/corpus-$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 \
	      -artifact_prefix=build-fuzz/$$n- build-fuzz/corpus-$$n tests/fuzz/corpus/$$n || exit 1; done

# ---- benchmarks ----------------------------------------------------------------------------
bench: all
	@tests/bench/run.sh $(BUILD)
bench-cuda:
	@$(MAKE) --no-print-directory CUDA=1 all
	@tests/bench/run-cuda.sh $(BUILD)

# ---- the demo: fine-tune models/stories260K end to end (pipelines/demo.mk, demo-out/report.md)
demo: deps
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@$(MAKE) --no-print-directory -f pipelines/demo.mk FTK=$(CURDIR)/$(BUILD)/bin/ftk

# ---- set-up --------------------------------------------------------------------------------
# Debian packages the build and tests need; idempotent (installs only what is missing).
DEB_PKGS := build-essential pkg-config libzstd-dev zstd libcjson-dev libarchive-dev libopenblas-dev \
            libpcre2-dev libutf8proc-dev libyaml-dev jq clang libclang-rt-dev xz-utils gzip time libxml2-utils
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	    || { echo "deps: apt-get install failed" >&2; exit 1; }; \
	else echo "deps: all present"; fi

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/ftk/plugins/peft $(DESTDIR)$(PREFIX)/lib/ftk/plugins/loss \
	    $(DESTDIR)$(PREFIX)/include/ftk $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/ftk/templates
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	install -m 755 $(LIBSO) $(LIBCUDA) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(LIBA) $(DESTDIR)$(PREFIX)/lib/
	for p in $(PLUGINS); do install -m 755 $$p $(DESTDIR)$(PREFIX)/lib/ftk/plugins/$$(basename $$(dirname $$p))/; done
	install -m 644 libcore/include/ftk/*.h $(DESTDIR)$(PREFIX)/include/ftk/
	$(if $(TEMPLATES),install -m 644 $(TEMPLATES) $(DESTDIR)$(PREFIX)/share/ftk/templates/)
	install -d $(DESTDIR)$(PREFIX)/share/ftk/pipelines
	cp -R pipelines/. $(DESTDIR)$(PREFIX)/share/ftk/pipelines/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@PKGS@|$(PKGS)|' \
	    libcore/ftk.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/ftk.pc

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/bin/ftk $(DESTDIR)$(PREFIX)/bin/ftk-* $(DESTDIR)$(PREFIX)/lib/libftk.* \
	    $(DESTDIR)$(PREFIX)/lib/ftk $(DESTDIR)$(PREFIX)/include/ftk $(DESTDIR)$(PREFIX)/share/ftk \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig/ftk.pc

clean:
	rm -rf build build-san build-fuzz

help:
	@echo "make            build libftk, tools, plugins into $(BUILD)/"
	@echo "make deps       install the Debian packages the build and tests need"
	@echo "make demo       deps + build + fine-tune models/stories260K end to end (demo-out/report.md)"
	@echo "make test       deps + build + all tests (unit, sanitizers, tools, fuzz corpora)"
	@echo "make test-cuda  GPU checks (CUDA ops against the CPU backend)"
	@echo "make fuzz       run each parser fuzzer FUZZ_SECONDS (default 60)"
	@echo "make bench      CPU benchmarks against the peers (docs/PERF.md)"
	@echo "make install    PREFIX=$(PREFIX)"

-include $(shell find $(BUILD) build-san -name '*.d' 2>/dev/null)
