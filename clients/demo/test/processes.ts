/**
 * Real gateway and worker processes for the browser test (no mocks): the SDK's test helpers
 * (clients/typescript/test/helpers/processes.ts), with the browser test's defaults.
 */
import { dropPrefix, keyPrefix, startNetworked, type Gateway } from '../../typescript/test/helpers/processes';

export { killAll, startWorker, type Gateway, type Proc } from '../../typescript/test/helpers/processes';

/** A networked gateway without auth (`?user=&name=` identities); `port` 0 picks a free one. */
export function startGateway(nodeId: string, prefix: string, port = 0): Promise<Gateway> {
  return startNetworked(prefix, ['--node-id', nodeId, '--insecure-no-auth'], port);
}

export { keyPrefix, dropPrefix as dropKeys };
