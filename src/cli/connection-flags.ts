// kvserver's connection hygiene flags: deadlines for each stage a client can stall in, idle
// timeouts and connection limits of the port (see src/rpc/server/connection-guard.ts).

import { DEFAULT_CONNECTION_LIMITS, type ConnectionLimits } from "../rpc/server/connection-guard.ts";
import { UsageError, type ParsedFlags } from "./flags.ts";

/** Flag name → the limit it sets. */
const FLAGS = {
  "handshake-timeout": "handshakeTimeoutMs",
  "header-timeout": "headerTimeoutMs",
  "body-timeout": "bodyTimeoutMs",
  "keepalive-timeout": "keepAliveTimeoutMs",
  "idle-timeout": "idleTimeoutMs",
  "max-connections": "maxConnections",
  "max-connections-per-ip": "maxConnectionsPerAddress",
} as const satisfies Record<string, keyof ConnectionLimits>;

export const CONNECTION_VALUE_FLAGS: Record<keyof typeof FLAGS, undefined> = {
  "handshake-timeout": undefined,
  "header-timeout": undefined,
  "body-timeout": undefined,
  "keepalive-timeout": undefined,
  "idle-timeout": undefined,
  "max-connections": undefined,
  "max-connections-per-ip": undefined,
};

const d = DEFAULT_CONNECTION_LIMITS;
export const CONNECTION_USAGE = `  --handshake-timeout MS    a connection's first bytes (the whole HTTP/2 preface and SETTINGS, or its
                            TLS handshake) must arrive within this, or it is closed (default ${d.handshakeTimeoutMs})
  --header-timeout MS       an HTTP/1.1 request head must be complete this long after its first byte;
                            else 408 and close (default ${d.headerTimeoutMs})
  --body-timeout MS         a request body must be complete this long after its head: HTTP/1.1 gets
                            408 and close, an HTTP/2 stream a reset; streaming uploads (peer streams)
                            are exempt (default ${d.bodyTimeoutMs})
  --keepalive-timeout MS    an HTTP/1.1 connection with no request in progress is closed after this
                            (default ${d.keepAliveTimeoutMs})
  --idle-timeout MS         an HTTP/2 connection with no open stream gets GOAWAY after this; a stream
                            (a Watch) keeps it open, authenticated peers are exempt (default ${d.idleTimeoutMs})
  --max-connections N       open connections at most; past it the oldest connection that never
                            completed a request is closed to make room, and only when there is none
                            is the new one refused (default ${d.maxConnections})
  --max-connections-per-ip N
                            the same rule per remote address (default ${d.maxConnectionsPerAddress}); a
                            benchmark opening more connections from one address needs more`;

/** The limits the flags set (unset ones are left out: the server's defaults apply). */
export function connectionLimitsFrom(flags: ParsedFlags): Partial<ConnectionLimits> {
  const limits: Partial<ConnectionLimits> = {};
  for (const [flag, field] of Object.entries(FLAGS) as [keyof typeof FLAGS, keyof ConnectionLimits][]) {
    const raw = flags.values[flag];
    if (raw === undefined) continue;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < 1 || !Number.isSafeInteger(value)) throw new UsageError(`--${flag} must be a positive integer, got "${raw}"`);
    limits[field] = value;
  }
  return limits;
}
