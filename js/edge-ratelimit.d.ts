// Types for Workers that call edge-ratelimit over a service binding (Workers RPC).
//
//   # the caller's wrangler.toml
//   services = [{ binding = "LIMITER", service = "edge-ratelimit", entrypoint = "RateLimiter" }]
//
//   import type { RateLimiterBinding } from "./edge-ratelimit";
//   interface Env { LIMITER: RateLimiterBinding }
//   const { success } = await env.LIMITER.limit({ key: userId });
//
// A superset of Cloudflare's rate-limiting binding (`limit({ key }) → { success }`): code written for
// that binding works unchanged. Bad arguments throw TypeError / RangeError (the message names the
// argument); Redis failing never throws: the result follows FAIL_MODE and says `degraded`.

/** A rule of RATE_LIMIT_POLICY: by name, or the rules a request with this method and path would meet. */
export type RuleRef = string | { method?: string; path: string };

export interface LimitOptions {
  /** Who is counted. Without `rule`: a key space of its own (the zero-config limit). With `rule`: a caller's user id, sharing the buckets the gateway keeps for that id. 1 to 4096 bytes, trimmed of surrounding spaces. */
  key: string;
  /** Tokens to take (default: each limit's own cost, 1 for the zero-config limit); a whole number from 1 to 1e9. */
  cost?: number;
  /** Never deny: `success` stays true and `shadowDenied` says whether the call would have been denied. */
  shadow?: boolean;
  /** Apply a policy rule's limits instead of the zero-config limit. */
  rule?: RuleRef;
  /** The caller's tier (one of the policy's `tiers`; needs `rule`). Default: the policy's `default_tier`. */
  tier?: string;
}

export type PeekOptions = Omit<LimitOptions, "shadow">;
export type ResetOptions = Pick<LimitOptions, "key" | "rule" | "tier">;

/** Why Redis did not decide (the fail mode did): see docs/responses.md for the reasons. */
export type DegradedReason =
  | "timeout"
  | "unreachable"
  | "unauthorized"
  | "throttled"
  | "server-error"
  | "redirected"
  | "malformed-reply"
  | "redis-error";

export interface LimitResult {
  /** Whether the call may go ahead (for `peek`: whether a `limit` of this cost would pass now). */
  success: boolean;
  /** Whole tokens left in the reported limit's bucket after this call. */
  remaining: number;
  /** Seconds until that bucket is full again (the RateLimit field's `t`). */
  reset: number;
  /** Whole seconds to wait: at least 1 when denied, 0 when allowed. */
  retryAfter: number;
  /** The reported limit's capacity (an override's, when one is in effect). */
  limit: number;
  /** The reported limit's name: the one that denied, else the one with the fewest tokens left; "default" for the zero-config limit. */
  name: string;
  /** A shadow limit (or a `shadow: true` call) would have denied this call. */
  shadowDenied: boolean;
  /** Present when Redis could not decide: the answer is FAIL_MODE's (open: success, bounded by a local bucket; closed: not); `remaining` and `reset` are then the local bucket's, or 0 without one. */
  degraded?: DegradedReason;
}

export interface ResetResult {
  success: boolean;
  /** How many of the buckets existed. */
  deleted: number;
  degraded?: DegradedReason;
}

/** What `env.LIMITER` offers (the deployed Worker's `RateLimiter` entrypoint). */
export interface RateLimiterBinding {
  limit(options: LimitOptions): Promise<LimitResult>;
  peek(options: PeekOptions): Promise<LimitResult>;
  reset(options: ResetOptions): Promise<ResetResult>;
}
