// The hot-user floor: answers 429 itself, as a limiter that already knows the caller is empty would.
export default {
  async fetch() {
    return new Response("Too Many Requests", { status: 429, headers: { "retry-after": "12" } });
  },
};
