// Umbrella header of the sage-attention C++ API.
#pragma once

#include "sage/attention.h"
#include "sage/calibration.h"
#include "sage/merge.h"
#include "sage/options.h"
#include "sage/status.h"
#include "sage/tensor.h"
#include "sage/version.h"
