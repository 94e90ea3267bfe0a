// lstm.h: the LSTM time loop, forward and backward.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

// =========================================================================================== LSTM

template <typename T>
std::vector<at::Tensor> lstm_forward_impl(const at::Tensor& xa, const at::Tensor& h0, const at::Tensor& c0,
                                          const at::Tensor& w_hh, const at::Tensor& bias, const at::Tensor& gamma_h,
                                          const at::Tensor& gamma_c, const at::Tensor& beta_c,
                                          const at::Tensor& mask, const at::Tensor& fmh, const at::Tensor& fvh,
                                          const at::Tensor& fmc, const at::Tensor& fvc, int64_t kind_h,
                                          int64_t kind_c, bool joint, bool carry, double eps_, bool keep,
                                          const Reducer& reduce) {
  const int64_t T_ = xa.size(0), N = xa.size(1), G = xa.size(2), H = G / 4;
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_h = gamma_h.numel() > 0, has_c = gamma_c.numel() > 0, has_beta = beta_c.numel() > 0;
  const States<T> h_all(h0, T_, keep), c_all(c0, T_, keep);
  // Kept states and no padding: the output h_1..h_T is a view of them, not a second (T, N, H) copy.
  const bool out_is_h = keep && mask.numel() == 0;
  const at::Tensor out = out_is_h ? h_all.all.narrow(0, 1, T_) : at::empty({T_, N, H}, o);
  auto acts = pooled_empty({Tk, N, G}, o), shat_all = has_h ? pooled_empty({Tk, N, G}, o) : at::empty({0}, o);
  // tanh(c_out) is one step's scratch: backward recomputes it from chat (or c) rather than keep T steps of it.
  // So is chat when the carried cell is the raw one: backward renormalizes c_all's rows (renormalize_row).
  const bool keep_chat = keep && carry;
  auto chat_all = pooled_empty({keep_chat ? T_ : 1, N, H}, o), tc_buf = at::empty({N, H}, o);
  auto rstd_h = rstd_buffer(kind_h, Tk, N, G, o), rstd_c = rstd_buffer(kind_c, Tk, N, H, o);
  auto mean_h = stats_buffer(kind_h, T_, G, o), var_h = stats_buffer(kind_h, T_, G, o);
  auto mean_c = stats_buffer(kind_c, T_, H, o), var_c = stats_buffer(kind_c, T_, H, o);
  auto count_h = kind_h == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto count_c = kind_c == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto s = at::empty({N, G}, o), cnew = at::empty({N, H}, o), cout_buf = at::empty({N, H}, o);
  T* cob = cout_buf.data_ptr<T>();
  const T *b = ptr<T>(bias), *gh = ptr<T>(gamma_h), *gc = ptr<T>(gamma_c), *bc = ptr<T>(beta_c);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* sp = s.data_ptr<T>();
  T* cn = cnew.data_ptr<T>();
  const RowGroups groups(N, H, kind_h == BATCH || kind_c == BATCH || (keep && (per_col(kind_h) || per_col(kind_c))),
                         keep);

  // The time loop for rows [r0, r1); `shared`: the rows of each step are spread over the threads.
  auto run_rows = [&](int64_t r0, int64_t r1, bool shared) {
    const StepGemm<T> gemm(w_hh.t(), r1 - r0, T_);  // s = h W_hh^T
    // Column statistics of one step (batch norm). A group of rows computes its own (given statistics only).
    std::vector<T> colmean_h(G), colmean_c(H), colrstd_h(shared ? 0 : G), colrstd_c(shared ? 0 : H);
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t tk = keep ? t : 0;
      const T* x = xa.data_ptr<T>() + t * N * G;
      gemm(sp + r0 * G, h_all.ptr(t) + r0 * H, H, joint ? x + r0 * G : nullptr);
      const bool* m = mk ? mk + t * N : nullptr;
      T* a_t = acts.data_ptr<T>() + tk * N * G;
      T* shat_t = ptr<T>(shat_all, tk * N * G);
      T* chat_t = chat_all.data_ptr<T>() + (keep_chat ? t : 0) * N * H;
      T* tc_t = tc_buf.data_ptr<T>();
      T* rh = per_col(kind_h) && !shared ? colrstd_h.data()
                                          : rstd_h.data_ptr<T>() + tk * rstd_h.size(1) * rstd_h.size(2);
      T* rc = per_col(kind_c) && !shared ? colrstd_c.data()
                                          : rstd_c.data_ptr<T>() + tk * rstd_c.size(1) * rstd_c.size(2);
      const T* hp = h_all.ptr(t);
      const T* cp = c_all.ptr(t);
      T* hn = h_all.ptr(t + 1);
      T* cnx = c_all.ptr(t + 1);
      T* o_t = out_is_h ? nullptr : out.data_ptr<T>() + t * N * H;
      if (has_h && per_col(kind_h)) {
        const int64_t cnt = col_stats<T>(reduce, sp, N, G, m, ptr<T>(fmh) + t * G, ptr<T>(fvh) + t * G, eps, kind_h,
                                         colmean_h.data(), rh, kind_h == BATCH ? ptr<T>(mean_h) + t * G : nullptr,
                                         kind_h == BATCH ? ptr<T>(var_h) + t * G : nullptr);
        if (kind_h == BATCH) count_h.data_ptr<T>()[t] = static_cast<T>(cnt);
      }
      auto gates = [&](int64_t n) {
        const T* srow = sp + n * G;
        T* a = a_t + n * G;
        const T* xadd = joint ? nullptr : x + n * G;
        if (has_h) {
          T* sh = shat_t + n * G;
          normalize_row(srow, G, kind_h, eps, colmean_h.data(), rh, sh, rh + n);
          pre_activation<T>(a, sh, gh, b, xadd, G);
        } else {
          pre_activation<T>(a, srow, nullptr, b, xadd, G);
        }
        lstm_gates_fwd<T>(a, a + H, a + 2 * H, a + 3 * H, cp + n * H, cn + n * H, H);
      };
      auto finish = [&](int64_t n) {
        T* cr = cn + n * H;
        T* ch = chat_t + n * H;
        T* tc = tc_t + n * H;
        const T* og = a_t + n * G + 3 * H;
        const bool keep = m == nullptr || m[n];
        if (has_c) {
          normalize_row(cr, H, kind_c, eps, colmean_c.data(), rc, ch, rc + n);
        }
        T* hrow = hn + n * H;
        T* crow = cnx + n * H;
        T* orow = o_t ? o_t + n * H : nullptr;
        T* cout = has_c ? cob + n * H : cr;
        if (has_c) affine<T>(cout, ch, gc, has_beta ? bc : nullptr, H);
        lstm_h_fwd<T>(og, cout, tc, hrow, orow, H);
        if (keep) {
          std::copy(carry ? cout : cr, (carry ? cout : cr) + H, crow);
        } else {
          hold_row<T>(hp + n * H, hrow, orow, H);
          hold_row<T>(cp + n * H, crow, static_cast<T*>(nullptr), H);
        }
      };
      // Batch statistics of the cell need every row's new cell first: two row passes. Given statistics do not.
      if (has_c && kind_c == BATCH_FIXED) {
        col_stats<T>(cn, N, H, m, ptr<T>(fmc) + t * H, ptr<T>(fvc) + t * H, eps, kind_c, colmean_c.data(), rc,
                     static_cast<T*>(nullptr), static_cast<T*>(nullptr));
      }
      if (has_c && kind_c == BATCH) {
        for_rows(N, G, gates);
        const int64_t cnt = col_stats<T>(reduce, cn, N, H, m, ptr<T>(fmc) + t * H, ptr<T>(fvc) + t * H, eps, kind_c,
                                         colmean_c.data(), rc, ptr<T>(mean_c) + t * H, ptr<T>(var_c) + t * H);
        count_c.data_ptr<T>()[t] = static_cast<T>(cnt);
        for_rows(N, H, finish);
      } else {
        groups.rows(r0, r1, G, shared, [&](int64_t n) {
          gates(n);
          finish(n);
        });
      }
    }
  };
  groups.run(run_rows);
  return {out, h_all.result(T_), c_all.result(T_), acts, shat_all, rstd_h,
          keep_chat ? chat_all : at::empty({0}, o), rstd_c, mean_h, var_h, count_h, mean_c, var_c, count_c};
}

template <typename T>
std::vector<at::Tensor> lstm_backward_impl(const at::Tensor& dout, const at::Tensor& dhT, const at::Tensor& dcT,
                                           const at::Tensor& w_hh, const at::Tensor& gamma_h,
                                           const at::Tensor& gamma_c, const at::Tensor& beta_c,
                                           const at::Tensor& mask,
                                           const at::Tensor& h_all, const at::Tensor& c_all,
                                           const at::Tensor& acts, const at::Tensor& shat_all,
                                           const at::Tensor& rstd_h, const at::Tensor& chat_all,
                                           const at::Tensor& rstd_c, const at::Tensor& mean_c,
                                           const at::Tensor& count_h, const at::Tensor& count_c, int64_t kind_h,
                                           int64_t kind_c, bool joint, bool carry, const Reducer& reduce) {
  const int64_t T_ = acts.size(0), N = acts.size(1), G = acts.size(2), H = G / 4;
  const auto o = acts.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  const bool has_h = gamma_h.numel() > 0, has_c = gamma_c.numel() > 0;
  auto dxa = pooled_empty(acts.sizes(), o);
  // da: d(pre-activation); ds: d(recurrent product h W_hh^T). Without a norm on the recurrent term ds = da = dxa;
  // joint terms: dxa = ds and da is one step's scratch; separate terms: dxa = da and ds goes to the ring.
  // Everything else (d(c_out), the reductions for bias and gains) is per step: nothing else is T steps long.
  auto da_step = joint && has_h ? at::empty({N, G}, o) : at::empty({0}, o);
  DsRing<T> ring(!has_h || joint ? dxa : at::Tensor(), T_, N, G, H, o);
  auto dcout_step = has_c ? at::empty({N, H}, o) : at::empty({0}, o);
  auto dbias = at::zeros({G}, o);
  auto dgamma_h = has_h ? at::zeros({G}, o) : at::empty({0}, o);
  auto dgamma_c = has_c ? at::zeros({H}, o) : at::empty({0}, o);
  auto dbeta_c = has_c ? at::zeros({H}, o) : at::empty({0}, o);
  auto dh = dhT.clone(), dc = dcT.clone(), dh_next = at::empty_like(dh), dc_next = at::empty_like(dc);
  auto dcnew = at::empty({N, H}, o), tc_step = at::empty({N, H}, o);
  // Without chat_all (the raw cell is carried): each step's chat renormalized from c_all, with mean_c (T, H), the
  // column means the batch kinds used.
  const bool renorm_c = has_c && chat_all.numel() == 0;
  auto chat_step = renorm_c ? at::zeros({N, H}, o) : at::empty({0}, o);  // (finished rows read it: finite)
  const T *gh = ptr<T>(gamma_h), *gc = ptr<T>(gamma_c), *bc = ptr<T>(beta_c);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* dcn = dcnew.data_ptr<T>();
  T* dcout_t = has_c ? dcout_step.data_ptr<T>() : nullptr;
  T* tc_t = tc_step.data_ptr<T>();
  // One step's column sums (batch statistics): of d(pre-activation) and of it times shat; of d(c_out) and of it
  // times chat.
  std::vector<T> sum_a(kind_h == BATCH ? G : 0), sum_a_hat(kind_h == BATCH ? G : 0);
  std::vector<T> sum_c(kind_c == BATCH ? H : 0), sum_c_hat(kind_c == BATCH ? H : 0);

  for (int64_t t = T_ - 1; t >= 0; --t) {
    const bool* m = mk ? mk + t * N : nullptr;
    const T* a_t = acts.data_ptr<T>() + t * N * G;
    T* ch_t = renorm_c ? chat_step.data_ptr<T>() : (has_c ? chat_all.data_ptr<T>() + t * N * H : nullptr);
    const T* sh_t = ptr<T>(shat_all, t * N * G);
    const T* rh = rstd_h.data_ptr<T>() + t * rstd_h.size(1) * rstd_h.size(2);
    const T* rc = rstd_c.data_ptr<T>() + t * rstd_c.size(1) * rstd_c.size(2);
    const T* cp = c_all.data_ptr<T>() + t * N * H;
    const T* do_t = dout.data_ptr<T>() + t * dout.stride(0);
    T* ds_t = ring.slot(t);
    T* da_t = joint && has_h ? da_step.data_ptr<T>() : (has_h ? dxa.data_ptr<T>() + t * N * G : ds_t);
    T* dhp = dh.data_ptr<T>();
    T* dcp = dc.data_ptr<T>();
    T* dcx = dc_next.data_ptr<T>();
    const bool col_c = has_c && kind_c == BATCH && count_c.data_ptr<T>()[t] >= 2;
    const bool col_h = has_h && kind_h == BATCH && count_h.data_ptr<T>()[t] >= 2;

    // d(c_out) of one row: from the output h = o * tanh(c_out), and from the carry when it is c_out.
    auto cell_out = [&](int64_t n) {
      const T* og = a_t + n * G + 3 * H;
      T* tc = tc_t + n * H;
      // tanh(c_out) again: c_out = gamma_c * chat + beta_c, or the new raw cell (what c_all holds for a running row)
      if (has_c) {
        T* ch = ch_t + n * H;
        if (renorm_c) {
          renormalize_row(c_all.data_ptr<T>() + ((t + 1) * N + n) * H, H, kind_c,
                          per_col(kind_c) ? mean_c.data_ptr<T>() + t * H : static_cast<const T*>(nullptr), rc,
                          per_row(kind_c) ? rc[n] : T(0), ch);
        }
        if (bc) {  // (one loop per case: see pre_activation)
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(gc[j] * ch[j] + bc[j]);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(gc[j] * ch[j]);
        }
      } else {
        const T* cr = c_all.data_ptr<T>() + ((t + 1) * N + n) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(cr[j]);
      }
      const T* dhr = dhp + n * H;
      const T* dor = do_t + n * dout.stride(1);
      const T* dcr = dcp + n * H;
      T* dco = has_c ? dcout_t + n * H : dcn + n * H;
      lstm_cout_bwd<T>(dhr, dor, og, tc, carry ? dcr : nullptr, dco, H);
    };
    // From d(c_out) to dc_new, the gates' pre-activations and the recurrent term's ds.
    auto gates = [&](int64_t n) {
      const T* ar = a_t + n * G;
      T* dar = da_t + n * G;
      T* dsr = ds_t + n * G;
      T* dcnr = dcn + n * H;
      const T* dcr = dcp + n * H;
      if (has_c) {
        const T* dco = dcout_t + n * H;
        if (col_c) {
          // dcnr already holds the column-normalized gradient
        } else {
          denormalize_row(dco, gc, ch_t + n * H, per_row(kind_c) ? rc[n] : T(0), rc, H, kind_c, dcnr);
        }
      }
      lstm_gates_bwd<T>(ar, dcnr, carry ? nullptr : dcr, dhp + n * H, do_t + n * dout.stride(1), tc_t + n * H, cp + n * H,
                        dar, dcx + n * H, H);
      if (has_h && !col_h) {
        denormalize_row(dar, gh, sh_t + n * G, per_row(kind_h) ? rh[n] : T(0), rh, G, kind_h, dsr);
      }  // (with batch statistics, ds comes after the step's column sums: col_norm_bwd_from_sums)
    };
    // A finished sequence: nothing flows into the step, the state's gradient passes through.
    auto finished = [&](int64_t n) {
      std::fill(da_t + n * G, da_t + (n + 1) * G, T(0));
      if (ds_t != da_t) std::fill(ds_t + n * G, ds_t + (n + 1) * G, T(0));
      if (has_c) std::fill(dcout_t + n * H, dcout_t + (n + 1) * H, T(0));
      std::copy(dcp + n * H, dcp + (n + 1) * H, dcx + n * H);
      std::fill(dcn + n * H, dcn + (n + 1) * H, T(0));
    };
    auto running = [&](int64_t n) { return m == nullptr || m[n]; };

    if (col_c) {
      for_rows(N, H, [&](int64_t n) { if (running(n)) cell_out(n); else finished(n); });
      // The step's column sums of d(c_out) and d(c_out) * chat: the gradients of beta_c and gamma_c, and what
      // batch norm's backward needs to turn d(c_out) into dcnew.
      col_sums_norm_bwd<T>(reduce, dcn, dcout_t, gc, ch_t, rc, sum_c.data(), sum_c_hat.data(),
                           dbeta_c.data_ptr<T>(), dgamma_c.data_ptr<T>(), N, H, m,
                           static_cast<int64_t>(count_c.data_ptr<T>()[t]));
      for_rows(N, G, [&](int64_t n) { if (running(n)) gates(n); });
    } else {
      for_rows(N, G, [&](int64_t n) {
        if (running(n)) {
          cell_out(n);
          gates(n);
        } else {
          finished(n);
        }
      });
    }
    // The bias and gain gradients of this step (finished rows hold zeros); with batch statistics the step's own
    // sums, which batch norm's backward needs too.
    if (col_h) {
      col_sums_norm_bwd<T>(reduce, ds_t, da_t, gh, sh_t, rh, sum_a.data(), sum_a_hat.data(), dbias.data_ptr<T>(),
                           dgamma_h.data_ptr<T>(), N, G, m, static_cast<int64_t>(count_h.data_ptr<T>()[t]));
    } else {
      add_col_sums<T>(da_t, has_h ? sh_t : nullptr, N, G, dbias.data_ptr<T>(), ptr<T>(dgamma_h));
    }
    if (has_c && !col_c) {
      add_col_sums<T>(dcout_t, ch_t, N, H, dbeta_c.data_ptr<T>(), dgamma_c.data_ptr<T>());
    }
    gemm(dh_next.data_ptr<T>(), ring.slot(t), ring.G);
    ring.done(t, h_all);
    if (m != nullptr) {
      T* dhx = dh_next.data_ptr<T>();
      for (int64_t n = 0; n < N; ++n)
        if (!m[n]) std::copy(dhp + n * H, dhp + (n + 1) * H, dhx + n * H);
    }
    std::swap(dh, dh_next);
    std::swap(dc, dc_next);
  }
  return {dxa, dh, dc, ring.weight_grad(h_all), dbias, dgamma_h, dgamma_c, dbeta_c};
}
