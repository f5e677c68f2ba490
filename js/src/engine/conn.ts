// One WebSocket connection to a node. Frames are encoded, decoded and checked by the core
// (each connection has its protocol session there); this side moves the bytes, counts
// them, and hands each event either to the move waiting for it or to the owner.

import type { NodeEvent, OutgoingFrame, Restored, RoamCore } from "./core.js";

type EventType = NodeEvent["type"];

interface Waiter {
  types: EventType[];
  resolve(event: NodeEvent): void;
  reject(error: Error): void;
}

export class NodeConnection {
  bytesIn = 0;
  bytesOut = 0;
  /** Events no move is waiting for: replies, Handled, WorkerFailed, refusals. */
  onEvent: (event: NodeEvent) => void = () => {};
  /** The connection broke (not closed by this side). */
  onLost: (reason: string) => void = () => {};
  private waiters: Waiter[] = [];
  private closed = false;

  private constructor(
    private readonly core: RoamCore,
    readonly url: string,
    private readonly conn: number,
    private readonly socket: WebSocket,
  ) {
    socket.onmessage = (message) => this.received(message.data);
    socket.onclose = () => this.lost(`${url} closed the connection`);
    socket.onerror = () => this.lost(`the connection to ${url} failed`);
  }

  /** Connects to the node at `url` and negotiates the protocol version. */
  static async open(core: RoamCore, url: string, name: string): Promise<NodeConnection> {
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    await new Promise<void>((resolve, reject) => {
      socket.onopen = () => resolve();
      socket.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
    const { conn, hello } = core.open(name);
    const connection = new NodeConnection(core, url, conn, socket);
    connection.sendBytes(hello);
    await connection.next(["Welcome"]);
    return connection;
  }

  send(frame: OutgoingFrame, payload?: Uint8Array): void {
    if (this.closed) throw new Error(`the connection to ${this.url} is closed`);
    this.sendBytes(this.core.send(this.conn, frame, payload));
  }

  private sendBytes(bytes: Uint8Array): void {
    this.bytesOut += bytes.length;
    this.socket.send(bytes);
  }

  /** Restores the state a return brought in (after its StateEnd). */
  adopt(): Restored {
    return this.core.adopt(this.conn);
  }

  /** The next event of one of `types`. A refusal from the node (an Error frame) or the
   * connection breaking rejects it. */
  next<T extends EventType>(types: T[]): Promise<Extract<NodeEvent, { type: T }>> {
    if (this.closed) return Promise.reject(new Error(`the connection to ${this.url} is closed`));
    return new Promise((resolve, reject) => {
      this.waiters.push({
        types,
        resolve: (event) => resolve(event as Extract<NodeEvent, { type: T }>),
        reject,
      });
    });
  }

  /** Closes the connection; nothing more is reported from it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.onclose = null;
    this.socket.onerror = null;
    this.socket.onmessage = null;
    this.socket.close();
    this.core.close(this.conn);
    this.failWaiters(new Error(`the connection to ${this.url} was closed`));
  }

  private received(data: unknown): void {
    if (this.closed) return;
    if (!(data instanceof ArrayBuffer)) {
      this.lost(`${this.url} sent a text message, which the protocol does not use`);
      return;
    }
    const bytes = new Uint8Array(data);
    this.bytesIn += bytes.length;
    let answer;
    try {
      answer = this.core.receive(this.conn, bytes);
    } catch (e) {
      this.lost(e instanceof Error ? e.message : String(e));
      return;
    }
    for (const frame of answer.send) this.sendBytes(frame);
    const event = answer.event;
    if (event.type === "Error" && this.waiters.length > 0) {
      // A refusal ends the exchange the waiters belong to.
      this.failWaiters(new Error(`${this.url} refused: ${event.message} (${event.code_name})`));
      return;
    }
    const waiter = this.waiters.findIndex((w) => w.types.includes(event.type));
    if (waiter >= 0) {
      const [found] = this.waiters.splice(waiter, 1);
      found.resolve(event);
      return;
    }
    this.onEvent(event);
  }

  private lost(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.socket.close();
    } catch {
      // already closing
    }
    this.core.close(this.conn);
    this.failWaiters(new Error(reason));
    this.onLost(reason);
  }

  private failWaiters(error: Error): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(error);
  }
}
