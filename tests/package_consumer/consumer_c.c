/* Uses the installed C API from C: the defaults arrive field by field (the
 * structs' layout does not depend on the compiler's enum size: this file is
 * built a second time with -fshort-enums), and a rejected call comes back
 * with a status and a message naming the bad argument. */
#include <sage/c_api.h>

#include <stdio.h>
#include <string.h>

/* C89 static assertions: an array of negative size does not compile. */
typedef char options_are_13_words[sizeof(sage_options_t) == 13 * 4 ? 1 : -1];
#ifdef SAGE_CONSUMER_SHORT_ENUMS
typedef char enums_are_short_here[sizeof(enum sage_layout) == 1 ? 1 : -1];
#endif

int main(void) {
  sage_options_t opts;
  memset(&opts, 0x5a, sizeof opts); /* each field must be written */
  if (sage_default_options(&opts) != SAGE_OK) return 1;
  if (opts.method != SAGE_METHOD_SAGE2 || opts.pv_format != SAGE_PV_FP8_E4M3 ||
      opts.pv_accum != SAGE_PV_ACCUM_TWO_LEVEL || opts.qk_granularity != SAGE_GRANULARITY_PER_WARP ||
      opts.sm_scale != 0.0f || opts.smooth_k != 1 || opts.smooth_v != 0 || opts.return_lse != 0) {
    fprintf(stderr, "C API defaults arrived wrong (method %d, pv_accum %d, smooth_k %d, return_lse %d)\n",
            (int)opts.method, (int)opts.pv_accum, (int)opts.smooth_k, (int)opts.return_lse);
    return 1;
  }
  if (sage_attention_forward(NULL, NULL, NULL, NULL, NULL, &opts, NULL, 0, NULL) != SAGE_ERROR_INVALID_ARGUMENT ||
      strstr(sage_last_error(), "q") == NULL) {
    fprintf(stderr, "C API did not reject null tensors: '%s'\n", sage_last_error());
    return 1;
  }
  printf("sage-attention %s consumed from C: %s\n", sage_version_string(), sage_last_error());
  return 0;
}
