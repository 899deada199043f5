// task.ts: what the trainer needs from an environment: prompts as token ids, a reward for a completion, the stop
// tokens, and (for SFT) a reference completion. Built from the tokenizer, the harmony renderer, the datasets and
// the reward rules by src/trainer/env.ts; tests build small ones directly.

export interface TaskExample {
  /** A stable id (dataset row or synthetic index), for logs and dumps. */
  id: string;
  /** The rendered prompt (harmony, ending in `<|start|>assistant`). */
  prompt: Int32Array;
  /** The ground-truth answer (e.g. "72"). */
  answer: string;
  /** A reference completion (token ids, ending with a stop token) for SFT, when the task has one. */
  reference?: Int32Array;
  /**
   * 1 where a reference token is the model's to learn, 0 where it is not (a multi-turn reference's tool results
   * and the framing the environment injects) [reference.length]; absent: every token.
   */
  referenceMask?: Uint8Array;
}

export interface RewardResult {
  reward: number;
  /** Whether the answer was right (accuracy); usually reward === 1. */
  correct: boolean;
}

export interface TaskEnv {
  readonly name: string;
  readonly train: TaskExample[];
  readonly val: TaskExample[];
  /** Generation stops after any of these (harmony: <|return|>, <|call|>). */
  readonly stopTokenIds: number[];
  reward(example: TaskExample, completion: Int32Array, finishReason: 'stop' | 'length'): RewardResult;
  /** Text of tokens (for logs and sample dumps). */
  decode?(tokens: Int32Array): string;
}

/** A problem with the data (missing file, empty split, too few prompts): reported without a stack trace. */
export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DataError';
  }
}
