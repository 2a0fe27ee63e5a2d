# Cross-compiling for linux-aarch64 with Debian's cross toolchain (g++-aarch64-linux-gnu), used by
# tools/arm64_check.sh. The compiler's own sysroot (/usr/aarch64-linux-gnu: glibc, libstdc++)
# is the root; everything else (Python's headers, pybind11, the aarch64 scipy-openblas32 wheel)
# is named by absolute path on the command line, so those searches look outside the root too.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)  # CMakeLists.txt adds the x86 kernel TUs only on x86_64

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)  # the build's programs (python, ninja) are the host's
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# try_run and friends run aarch64 programs through qemu-user when LSTMCORE_ARM64_ROOT names the
# arm64 root holding the dynamic loader and libraries
if(DEFINED ENV{LSTMCORE_ARM64_ROOT})
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L "$ENV{LSTMCORE_ARM64_ROOT}")
endif()
