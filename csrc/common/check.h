// Last-line-of-defence checks shared by every backend. The Python layer validates arguments with
// messages that name them; these only stop a malformed call from reading out of bounds.
#pragma once
#include <torch/headeronly/util/Exception.h>

#define KERNELS_CHECK(cond, ...) STD_TORCH_CHECK(cond, "kernels: ", __VA_ARGS__)
