// Host driver for backends/cuda_q4/q4_math.h: runs the kernels' block arithmetic
// on the CPU so tests/test_cuda_q4.py can compare it with numpy in float64.
//
// usage: cuda_q4_math_check IN OUT
// IN:  int32 type, rows, cols; the matrix in file (ggml) layout; cols float32 activations.
// OUT: uint32 words[rows*nb*W]; uint32 scales[rows*nb]; float dequant[rows*cols];
//      int8 xq[cols]; float (d, s)[nb]; float y[rows]; uint16 x_as_f16[cols];
//      float y_float_act[rows] (the same products with float activations).
// y is reduced the way a warp reduces it: lane l sums blocks l, l+32, ...,
// then the 32 lane sums are combined in butterfly (xor-shuffle) order.
#include "q4_math.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

static bool read_all(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }
static bool write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    int32_t hdr[3];
    if (!read_all(in, hdr, sizeof hdr)) {
        fprintf(stderr, "short header\n");
        return 1;
    }
    const int type = hdr[0];
    const int64_t rows = hdr[1], cols = hdr[2], nb = cols / L2_QK;
    const int fbytes = l2_file_block_bytes(type), dtype = l2_device_type(type);
    const int W = l2_block_words(dtype);
    if (fbytes == 0 || W == 0 || cols % L2_QK != 0 || rows <= 0) {
        fprintf(stderr, "bad type %d or shape %lld x %lld\n", type, (long long)rows, (long long)cols);
        return 1;
    }
    std::vector<uint8_t> file((size_t)(rows * nb * fbytes));
    std::vector<float> x((size_t)cols);
    if (!read_all(in, file.data(), file.size()) || !read_all(in, x.data(), x.size() * sizeof(float))) {
        fprintf(stderr, "short input\n");
        return 1;
    }
    fclose(in);

    // repack, as model upload does
    std::vector<uint32_t> words((size_t)(rows * nb * W)), scales((size_t)(rows * nb));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++)
            l2_repack_block(type, &file[(size_t)(r * nb + b) * (size_t)fbytes], &words[l2_word_index(r, b, nb, W)],
                            &scales[l2_scale_index(r, b, nb)]);

    std::vector<float> deq((size_t)(rows * cols));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++)
            for (int i = 0; i < L2_QK; i++)
                deq[(size_t)(r * cols + b * L2_QK + i)] =
                    l2_dequant(dtype, &words[l2_word_index(r, b, nb, W)], scales[l2_scale_index(r, b, nb)], i);

    // activation quantization, as the norm kernel does it per block
    std::vector<uint32_t> xq((size_t)cols / 4);
    std::vector<float> xds((size_t)nb * 2);
    for (int64_t b = 0; b < nb; b++) {
        float amax = 0.0f;
        for (int i = 0; i < L2_QK; i++)
            amax = fmaxf(amax, fabsf(x[(size_t)(b * L2_QK + i)]));
        const float d = l2_act_scale(amax);
        int sum = 0;
        int8_t *q = reinterpret_cast<int8_t *>(&xq[(size_t)b * 8]);
        for (int i = 0; i < L2_QK; i++) {
            q[i] = l2_act_quant(x[(size_t)(b * L2_QK + i)], d);
            sum += q[i];
        }
        xds[2 * b] = d;
        xds[2 * b + 1] = d * (float)sum;
    }

    std::vector<float> y((size_t)rows);
    for (int64_t r = 0; r < rows; r++) {
        float lane_sum[32] = {0};
        for (int lane = 0; lane < 32; lane++)
            for (int64_t b = lane; b < nb; b += 32)
                lane_sum[lane] += l2_dot_block(dtype, &words[l2_word_index(r, b, nb, W)], scales[l2_scale_index(r, b, nb)],
                                               &xq[(size_t)b * 8], xds[2 * b], xds[2 * b + 1], &x[(size_t)b * L2_QK]);
        for (int off = 16; off > 0; off >>= 1)
            for (int lane = 0; lane < off; lane++)
                lane_sum[lane] += lane_sum[lane + off];
        y[(size_t)r] = lane_sum[0];
    }

    std::vector<float> yf((size_t)rows);
    for (int64_t r = 0; r < rows; r++) {
        float lane_sum[32] = {0};
        for (int lane = 0; lane < 32; lane++)
            for (int64_t b = lane; b < nb; b += 32)
                lane_sum[lane] += l2_dot_block_f32(dtype, &words[l2_word_index(r, b, nb, W)],
                                                   scales[l2_scale_index(r, b, nb)], &x[(size_t)b * L2_QK]);
        for (int off = 16; off > 0; off >>= 1)
            for (int lane = 0; lane < off; lane++)
                lane_sum[lane] += lane_sum[lane + off];
        yf[(size_t)r] = lane_sum[0];
    }

    std::vector<uint16_t> xh((size_t)cols);
    for (int64_t i = 0; i < cols; i++)
        xh[(size_t)i] = l2_f32_to_f16(x[(size_t)i]);

    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 1;
    }
    bool ok = write_all(out, words.data(), words.size() * 4) && write_all(out, scales.data(), scales.size() * 4) &&
              write_all(out, deq.data(), deq.size() * 4) && write_all(out, xq.data(), xq.size() * 4) &&
              write_all(out, xds.data(), xds.size() * 4) && write_all(out, y.data(), y.size() * 4) &&
              write_all(out, xh.data(), xh.size() * 2) && write_all(out, yf.data(), yf.size() * 4);
    ok = (fclose(out) == 0) && ok;
    return ok ? 0 : 1;
}
