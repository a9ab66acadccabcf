export { describeTokenCache, type DescribeTokenCacheOptions } from './conformance.js';
export {
  describeTokenSharing,
  describeStoreOutage,
  type DescribeTokenSharingOptions,
  type DescribeStoreOutageOptions,
} from './sharing.js';
