// Why the node's port could not be bound, as an error with a code and advice.

/** The port could not be bound; `code` says why ("port_in_use", "permission_denied", "listen_failed"). */
export class ListenError extends Error {
  constructor(
    readonly code: "port_in_use" | "permission_denied" | "listen_failed",
    message: string,
  ) {
    super(message);
    this.name = "ListenError";
  }
}

/** The ListenError of a failed listen(). */
export function listenError(error: NodeJS.ErrnoException, host: string, port: number): ListenError {
  const where = `${host}:${port}`;
  switch (error.code) {
    case "EADDRINUSE":
      return new ListenError("port_in_use", `cannot listen on ${where}: the port is already in use (another kvserver running?)`);
    case "EACCES":
      return new ListenError("permission_denied", `cannot listen on ${where}: permission denied (ports below 1024 need privileges)`);
    default:
      return new ListenError("listen_failed", `cannot listen on ${where}: ${error.message}`);
  }
}
