/* Test harness: the C runtime's kernels one call at a time, for tests/test_c_kernels.py.
 * Reads lines "kernel a b c" from stdin and prints each result on a line of its own. */
#include <stdio.h>
#include <string.h>

#include "lstmq_runtime.c"

int main(void) {
  char kernel[16];
  long long a, b, c;
  while (scanf("%15s %lld %lld %lld", kernel, &a, &b, &c) == 4) {
    long long r;
    int32_t x = (int32_t)a, y = (int32_t)b, z = (int32_t)c;
    if (!strcmp(kernel, "rsr")) r = rsr(x, y);
    else if (!strcmp(kernel, "left")) r = saturating_left_shift(x, y);
    else if (!strcmp(kernel, "highmul")) r = rounding_high_mul(x, y);
    else if (!strcmp(kernel, "requant")) r = requantize(x, y, z);
    else if (!strcmp(kernel, "divide")) r = rounding_divide(x, y);
    else if (!strcmp(kernel, "sigmoid")) r = lut((int16_t)x, LSTMQ_SIGMOID_LUT);
    else if (!strcmp(kernel, "tanh")) r = lut((int16_t)x, LSTMQ_TANH_LUT);
    else if (!strcmp(kernel, "mulshift")) r = fixed_mul_shift(x, y, z);
    else if (!strcmp(kernel, "sub")) r = saturating_sub(x, y);
    else if (!strcmp(kernel, "isqrt")) r = isqrt(x);
    else if (!strcmp(kernel, "log2")) r = log2_q10(x);
    else if (!strcmp(kernel, "blockshift")) r = block_shift(x);
    else if (!strcmp(kernel, "applyshift")) r = apply_shift(x, y);
    else { fprintf(stderr, "unknown kernel %s\n", kernel); return 2; }
    printf("%lld\n", r);
  }
  return 0;
}
