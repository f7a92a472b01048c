/* Clip layout: uint8 channels-last frames -> planar (3, T, H, W) uint8 or normalised float32, and the normalisation
   of planar uint8 batches. Compiled (-ffp-contract=off) and loaded by lavila/utils/ckernel.py for
   lavila/data/layout_kernel.py, which calls planar_f32, planar_u8 and normalize_planes through ctypes. */
#include <stdint.h>

/* src: frames x rows x cols pixels of 3 interleaved bytes, at byte strides (frame_stride, row_stride, 3).
   dst: planar (3, frames, rows, cols), contiguous. */
void planar_f32(const uint8_t *src, float *dst, int64_t frames, int64_t rows, int64_t cols,
                int64_t frame_stride, int64_t row_stride, const float *scale, const float *shift) {
    const int64_t plane = rows * cols, channel = frames * plane;
    const float a0 = scale[0], a1 = scale[1], a2 = scale[2], b0 = shift[0], b1 = shift[1], b2 = shift[2];
    for (int64_t t = 0; t < frames; ++t)
        for (int64_t y = 0; y < rows; ++y) {
            const uint8_t *s = src + t * frame_stride + y * row_stride;
            float *d0 = dst + t * plane + y * cols, *d1 = d0 + channel, *d2 = d1 + channel;
            for (int64_t x = 0; x < cols; ++x) {
                d0[x] = (float)s[3 * x] * a0 + b0;
                d1[x] = (float)s[3 * x + 1] * a1 + b1;
                d2[x] = (float)s[3 * x + 2] * a2 + b2;
            }
        }
}

void planar_u8(const uint8_t *src, uint8_t *dst, int64_t frames, int64_t rows, int64_t cols,
               int64_t frame_stride, int64_t row_stride) {
    const int64_t plane = rows * cols, channel = frames * plane;
    for (int64_t t = 0; t < frames; ++t)
        for (int64_t y = 0; y < rows; ++y) {
            const uint8_t *s = src + t * frame_stride + y * row_stride;
            uint8_t *d0 = dst + t * plane + y * cols, *d1 = d0 + channel, *d2 = d1 + channel;
            for (int64_t x = 0; x < cols; ++x) {
                d0[x] = s[3 * x];
                d1[x] = s[3 * x + 1];
                d2[x] = s[3 * x + 2];
            }
        }
}

/* planes [first, last) of `length` contiguous bytes each; plane p is channel p % 3. */
void normalize_planes(const uint8_t *src, float *dst, int64_t first, int64_t last, int64_t length,
                      const float *scale, const float *shift) {
    for (int64_t p = first; p < last; ++p) {
        const float a = scale[p % 3], b = shift[p % 3];
        const uint8_t *s = src + p * length;
        float *d = dst + p * length;
        for (int64_t i = 0; i < length; ++i)
            d[i] = (float)s[i] * a + b;
    }
}
