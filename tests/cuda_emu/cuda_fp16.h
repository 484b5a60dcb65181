/* CPU stand-in (tests only): everything lives in cuda_runtime.h. */
#include "cuda_runtime.h"
