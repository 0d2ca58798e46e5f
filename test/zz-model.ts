import { savedTinyModel } from "./sharpen-helpers.ts"
import { useCpu } from "./helpers.ts"
await useCpu()
console.log(await savedTinyModel(3))
