/* The planner's expected terms (native/planner.c). */
#ifndef EDGESDK_PLANNER_H
#define EDGESDK_PLANNER_H

#include <stddef.h>

#define ES_PLAN_FIELDS 11 /* rows of the table matrix, in es_plan_terms' order */

typedef struct {
    double device_slowdown, server_slowdown, rtt_ms, queue_ms, overhead_ms;
    double bw_mbps, spread, slo_ms;
    double margin_ms, min_budget_ms, fallback_exit_acc; /* the engine's constants */
} es_plan_state;

/* table: ES_PLAN_FIELDS rows of n doubles (dev_ms, enc_ms, wire_bytes, srv_ms, p_exit,
 * exit_ms, exit_acc, rest_acc, local_ms, local_acc, has_exit as 0/1); out: 3 rows of n
 * (E[accuracy], E[latency] ms, P(latency > SLO)); out must not overlap table. */
void es_plan_terms(const double *table, size_t n, const es_plan_state *state, double *out);

#endif
