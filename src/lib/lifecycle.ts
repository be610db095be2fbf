/** Where the instance is in its life; `/ready` and the upgrade gate read it. */
export type Phase = 'starting' | 'ready' | 'draining'

export class Lifecycle {
  phase: Phase = 'starting'
  /** Upgrades that passed the gate and have not finished their handshake. */
  pendingHandshakes = 0

  get accepting (): boolean {
    return this.phase === 'ready'
  }
}
