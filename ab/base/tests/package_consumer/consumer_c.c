/* Uses the installed C API from C: a rejected call must come back with a
 * status and a message naming the bad argument. */
#include <sage/c_api.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  sage_options_t opts;
  if (sage_default_options(&opts) != SAGE_OK) return 1;
  if (sage_attention_forward(NULL, NULL, NULL, NULL, NULL, &opts, NULL, 0, NULL) != SAGE_ERROR_INVALID_ARGUMENT ||
      strstr(sage_last_error(), "q") == NULL) {
    fprintf(stderr, "C API did not reject null tensors: '%s'\n", sage_last_error());
    return 1;
  }
  printf("sage-attention %s consumed from C: %s\n", sage_version_string(), sage_last_error());
  return 0;
}
