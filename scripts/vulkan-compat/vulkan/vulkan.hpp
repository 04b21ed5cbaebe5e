// Used by scripts/vulkan-lavapipe.sh only when the system's Vulkan headers are older than
// VK_EXT_layer_settings (Vulkan 1.3.261; Debian 12 ships 1.3.239): llama.cpp's Vulkan backend
// always chains a vk::LayerSettingsCreateInfoEXT to its instance (it turns on the validation
// layer's best-practice checks in debug builds). This wrapper includes the system's vulkan.hpp
// and adds the three declarations of that extension, as the Vulkan specification defines them.
// A loader or driver that does not know the structure skips it in the pNext chain.
#pragma once
#include_next <vulkan/vulkan.hpp>

#ifndef VK_EXT_layer_settings
#define VK_EXT_layer_settings 1
#include <cstdint>
#include <vector>

namespace vk {
enum class LayerSettingTypeEXT : int32_t {
    eBool32 = 0,
    eInt32 = 1,
    eInt64 = 2,
    eUint32 = 3,
    eUint64 = 4,
    eFloat32 = 5,
    eFloat64 = 6,
    eString = 7,
};

struct LayerSettingEXT {
    const char * pLayerName = nullptr;
    const char * pSettingName = nullptr;
    LayerSettingTypeEXT type = LayerSettingTypeEXT::eBool32;
    uint32_t valueCount = 0;
    const void * pValues = nullptr;
};

struct LayerSettingsCreateInfoEXT {
    // VK_STRUCTURE_TYPE_LAYER_SETTINGS_CREATE_INFO_EXT
    int32_t sType = 1000496000;
    const void * pNext = nullptr;
    uint32_t settingCount = 0;
    const LayerSettingEXT * pSettings = nullptr;

    explicit LayerSettingsCreateInfoEXT(const std::vector<LayerSettingEXT> & settings)
        : settingCount(static_cast<uint32_t>(settings.size())), pSettings(settings.data()) {}
};
}  // namespace vk
#endif
