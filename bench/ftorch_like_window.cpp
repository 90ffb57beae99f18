// ftorch_like_window.cpp -- what FTorch does, for bench/bench_bridge_overhead.py part 4.
//
// FTorch (Cambridge-ICCS/FTorch) lets Fortran call TorchScript models through libtorch's
// C++ API. This program does the same work natively, with no Python anywhere: it loads the
// bundle's two networks as TorchScript (traced by the benchmark from the same weights) and
// runs the windows an ESM would ask for -- per window one regression forward on the
// coarse grid and NFE denoiser forwards on the fine grid with an Euler update in between,
// batch 1, float32, torch's default allocator -- so that precipdiff's whole window (Fortran
// -> C -> embedded Python -> networks -> back) can be compared with the networks alone.
//
// Usage: ftorch_like_window REG.pt DEN.pt NVAR NLAT_C NLON_C NLAT_F NLON_F NFE WINDOWS THREADS
// Prints "WINDOW_S <seconds>" per window and "RUN_S <seconds>" for all of them.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  if (argc != 11) {
    std::fprintf(stderr,
                 "usage: %s REG.pt DEN.pt NVAR NLAT_C NLON_C NLAT_F NLON_F NFE WINDOWS THREADS\n",
                 argv[0]);
    return 2;
  }
  const int nvar = std::atoi(argv[3]), nlat_c = std::atoi(argv[4]), nlon_c = std::atoi(argv[5]);
  const int nlat_f = std::atoi(argv[6]), nlon_f = std::atoi(argv[7]), nfe = std::atoi(argv[8]);
  const int windows = std::atoi(argv[9]), threads = std::atoi(argv[10]);
  at::set_num_threads(threads);
  torch::jit::Module reg = torch::jit::load(argv[1]);
  torch::jit::Module den = torch::jit::load(argv[2]);
  reg.eval();
  den.eval();
  c10::InferenceMode guard;
  at::manual_seed(0);
  const auto t_run = std::chrono::steady_clock::now();
  for (int w = 0; w < windows; ++w) {
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor x = at::randn({1, nvar, nlat_c, nlon_c});
    torch::Tensor coarse = reg.forward({x}).toTensor();
    // the condition: the coarse field upsampled (nearest here; precipdiff uses a sparse
    // bilinear matrix, part of its glue)
    torch::Tensor cond = at::upsample_nearest2d(coarse, {nlat_f, nlon_f});
    // Euler steps on the EDM schedule (rho 7, sigma 80 -> 0.002), one denoiser call each
    torch::Tensor y = at::randn({1, 1, nlat_f, nlon_f}) * 80.0;
    for (int i = 0; i < nfe; ++i) {
      const double r = nfe > 1 ? double(i) / (nfe - 1) : 0.0;
      const double s_hi = std::pow(80.0, 1 / 7.0), s_lo = std::pow(0.002, 1 / 7.0);
      const double t_cur = std::pow(s_hi + r * (s_lo - s_hi), 7.0);
      const double r1 = nfe > 1 ? double(i + 1) / (nfe - 1) : 1.0;
      const double t_next = i + 1 < nfe ? std::pow(s_hi + r1 * (s_lo - s_hi), 7.0) : 0.0;
      torch::Tensor sigma = at::full({1}, t_cur);
      torch::Tensor d = den.forward({y, sigma, cond}).toTensor();
      y = y + (t_next - t_cur) * (y - d) / t_cur;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("WINDOW_S %.6f %.6g\n", s, y.abs().mean().item<double>());
  }
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
  std::printf("RUN_S %.6f\n", total);
  return 0;
}
