/*
 * The planner's expected terms per candidate: edgesdk/policy/planner.py's expected_terms
 * (its numpy code is the reference and the fallback), one candidate at a time.
 *
 * numpy spends ~1 us per operation on a table of 25-200 candidates, and the planner's
 * model takes ~130 of them: 70-200 us per decision on an x86 server, several times that on
 * a Raspberry Pi. Here it is a few microseconds. Every expression is written in the order
 * numpy evaluates it, and the build disables floating-point contraction (GCC, Clang), so
 * the two agree to an ulp or so: libm's exp and log and numpy's own may differ in the last
 * bit. The tests compare them on random tables and states.
 */
#include <math.h>
#include <stddef.h>

#include "planner.h"

/* np.maximum / np.minimum: a NaN in either argument is the result */
static double np_max(double a, double b) { return (a >= b || a != a) ? a : b; }
static double np_min(double a, double b) { return (a <= b || a != a) ? a : b; }

/* _p_slower: P(the transfer takes longer than slack), lognormal with log-spread s, Phi
 * approximated by a logistic */
static double p_slower(double transfer, double slack, double s) {
    double p;
    if (slack <= 0.0) return 1.0;
    if (s <= 0.0) {
        p = transfer > slack ? 1.0 : 0.0;
    } else {
        double ratio = np_max(transfer / np_max(slack, 1e-12), 1e-300);
        double z = np_min(log(ratio) * (-1.702 / s), 50.0);
        p = 1.0 / (1.0 + exp(z));
    }
    return p;
}

void es_plan_terms(const double *table, size_t n, const es_plan_state *st, double *out) {
    const double *dev_ms = table, *enc_ms = table + n, *wire = table + 2 * n,
                 *srv_ms = table + 3 * n, *p_exit = table + 4 * n, *exit_ms = table + 5 * n,
                 *exit_acc = table + 6 * n, *rest_acc = table + 7 * n,
                 *local_ms = table + 8 * n, *local_acc = table + 9 * n,
                 *has_exit = table + 10 * n;
    double *acc_out = out, *lat_out = out + n, *viol_out = out + 2 * n;
    const double s = st->spread, slo = st->slo_ms;
    const double fixed = st->rtt_ms + st->queue_ms + st->overhead_ms;
    const double per_byte = 8.0 / (st->bw_mbps * 1e3);
    const double grow = exp(s * s / 2), tilt = exp(s * s);
    for (size_t i = 0; i < n; i++) {
        int offload = wire[i] > 0.0, exits = has_exit[i] != 0.0;
        /* branch_latency */
        double remote = srv_ms[i] * st->server_slowdown + fixed;
        double dev = (dev_ms[i] + enc_ms[i]) * st->device_slowdown;
        double base = dev + (offload ? remote : 0.0);
        double transfer = wire[i] * per_byte;
        /* _offload */
        double local = local_ms[i] * st->device_slowdown;
        double left = slo - dev;
        double reserve = (!exits && left - local > 1.0) ? local : 0.0;
        double budget = np_max(left - reserve - st->margin_ms, 0.0);
        double slack = budget - (base - dev);
        double p_late = p_slower(transfer, slack, s);
        double lat_ok = np_min(base + transfer * grow, dev + budget);
        int exit_answer = exits && dev + budget + local > slo;
        double hedge = (exit_answer || budget <= st->min_budget_ms)
                           ? 0.0
                           : np_min(local, np_max(slo - st->margin_ms - dev - budget, 0.0));
        double p_rescued = 0.0, lat_rescued = 0.0;
        if (hedge > 0.0 && p_late > 1e-9) {
            double a = slack, h = hedge, tilted = transfer * tilt;
            double p = p_late - p_slower(transfer, a + h, s);
            double partial = transfer * grow *
                             (p_slower(tilted, a, s) - p_slower(tilted, a + h, s));
            p_rescued = p;
            lat_rescued = p * base + np_min(np_max(partial, p * a), p * (a + h));
        }
        /* expected_terms */
        double lat_to = dev + budget + (exit_answer ? 0.0 : local);
        double acc_to = local_acc[i] * (exit_answer ? st->fallback_exit_acc : 1.0);
        double q_ok = 1.0 - p_late, p_lost = p_late - p_rescued;
        double r_lat, r_acc, r_viol;
        if (offload) {
            r_lat = q_ok * lat_ok + lat_rescued + p_lost * lat_to;
            r_acc = (q_ok + p_rescued) * rest_acc[i] + p_lost * acc_to;
            r_viol = p_lost * (lat_to > slo * (1 + 1e-9) ? 1.0 : 0.0);
        } else {
            r_lat = dev;
            r_acc = rest_acc[i];
            r_viol = dev > slo ? 1.0 : 0.0;
        }
        double exit_lat = exit_ms[i] * st->device_slowdown;
        double p = p_exit[i], q = 1.0 - p;
        acc_out[i] = p * exit_acc[i] + q * r_acc;
        lat_out[i] = p * exit_lat + q * r_lat;
        viol_out[i] = p * (exit_lat > slo ? 1.0 : 0.0) + q * r_viol;
    }
}
