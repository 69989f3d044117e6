# Benchmark build: compiles every source of the chosen sets to an object file. No linking.
#
#   make -f bench/build.mk SRC=<corpus or checkout> OUT=<object dir> CC=... CXX=... \
#        [SETS="lua zstd rocksdb"] [ROCKSDB_N=40] -jN
#   make -f bench/build.mk ... count     # prints how many objects the chosen sets produce
#
# bench/run.sh runs it inside a checkout with SRC=. so the compiler sees relative paths, as in
# a developer's build. The flags are fixed so that results compare across machines and tools.

SRC ?= corpus
OUT ?= obj
SETS ?= lua zstd rocksdb
ROCKSDB_N ?= 40
CFLAGS ?= -O2 -g
CXXFLAGS ?= -O2 -g -std=c++17

LUA_FLAGS := -DLUA_USE_LINUX
ZSTD_FLAGS := -I$(SRC)/zstd -I$(SRC)/zstd/common -DZSTD_MULTITHREAD=0 -DZSTD_DISABLE_ASM
ROCKSDB_FLAGS := -w -DROCKSDB_PLATFORM_POSIX -DROCKSDB_LIB_IO_POSIX -DOS_LINUX -DNDEBUG \
  -DROCKSDB_SUPPORT_THREAD_LOCAL -I$(SRC)/rocksdb/include -I$(SRC)/rocksdb

# Sources per set. RocksDB: the first ROCKSDB_N entries of its library source list.
sources.lua := $(wildcard $(SRC)/lua/*.c)
sources.zstd := $(foreach part,common compress decompress dictBuilder,$(wildcard $(SRC)/zstd/$(part)/*.c))
sources.rocksdb := $(addprefix $(SRC)/rocksdb/,\
  $(shell head -n $(ROCKSDB_N) $(SRC)/rocksdb/lib_sources.txt 2>/dev/null))

chosen := $(foreach set,$(SETS),$(sources.$(set)))
objects := $(patsubst $(SRC)/%,$(OUT)/%.o,$(basename $(chosen)))

.PHONY: all count
all: $(objects)

count:
	@echo $(words $(objects))

$(OUT)/lua/%.o: $(SRC)/lua/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LUA_FLAGS) -c $< -o $@

$(OUT)/zstd/%.o: $(SRC)/zstd/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(ZSTD_FLAGS) -c $< -o $@

$(OUT)/rocksdb/%.o: $(SRC)/rocksdb/%.cc
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(ROCKSDB_FLAGS) -c $< -o $@
