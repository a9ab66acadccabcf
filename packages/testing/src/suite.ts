export { describeTokenCache, childThatExitsByItself, badWriteRefusals, type DescribeTokenCacheOptions } from './conformance.js';
export {
  describeTokenSharing,
  describeStoreOutage,
  type DescribeTokenSharingOptions,
  type DescribeStoreOutageOptions,
} from './sharing.js';
export type { CacheChildOp, CacheChildResult } from './cache-child.js';
export { describeOptions, type DescribeOptionsOptions, type OptionCases } from './options.js';
