// distributed/index.ts: launcher, rendezvous and collectives (NCCL or CPU).
export * from './collectives.ts';
export * from './cpu-collectives.ts';
export * from './launch.ts';
export { Hub, TcpGroup } from './tcp-group.ts';
