// What the portable extension (_C) hands sage_attention._torch_calls: the
// core's entry point for framework tensors with a workspace allocator, and
// the Status-to-exception translation, as a capsule (_C._framework_entries).
// So _torch_calls links no copy of the core (~27 MB of device code) and
// runs the one loaded with _C: one set of caches per process.
#pragma once

#include "api/binding_entry.h"
#include "sage/version.h"

struct FrameworkEntries {
  sage::Status (*forward)(const sage::AttentionArgs&, const sage::AttentionOptions&,
                          const sage::detail::WorkspaceAllocator&, sage::Stream);
  void (*set_python_error)(const sage::Status&);
};

// The capsule's name. With the version in it, modules of two different
// builds do not pair up (the struct may change between them).
#define SAGE_FRAMEWORK_ENTRIES_CAPSULE "sage_attention._C._framework_entries-" SAGE_VERSION_STRING
