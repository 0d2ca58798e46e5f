/**
 * The one worker thread script: serves the job protocol on a model replica
 * (`JobHandlers.layer`) over `effect/rpc`'s worker protocol.
 *
 * @since 0.7.0
 */
import * as JobHandlers from "./JobHandlers.ts"
import * as JobThreads from "./JobThreads.ts"

JobThreads.serve(JobHandlers.layer)
